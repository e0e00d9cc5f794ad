"""The reproduction of the paper's Tables 1-3 and Figures 5-7.

`examples/reproduce.py` is its command line. One module per table or figure
says how that result is made (`run(exp)`) and rendered into the summary
(`summary_lines(result)`):

  table1.py   the choice of f_b: clean, BPDA-I, ‖x − E g(x)‖∞
  table2.py   black-box transfer and query attacks
  table3.py   clean and worst-case accuracy, time per training epoch
  fig5.py     BPDA (softsign, tanh) vs the LL-PGD steps N
  fig6.py     clean, BPDA-I + EOT and white-box transfer vs Δ
  fig7.py     BPDA-I + EOT vs the number of EOT samples

Shared by them:

  presets.py      the experiments, the dataset and each preset's settings
  reference.py    the paper's numbers and claims
  model_store.py  trains each model once, stores and reloads it
  experiment.py   one experiment's images, cached units, attacks, results.json
  storage.py      settings digests and atomic JSON files
  plots.py        the PNG plots
  markdown.py     the summary's shared Markdown pieces
  runner.py       runs one experiment by name
  summary.py      renders every finished experiment into one Markdown page
"""
