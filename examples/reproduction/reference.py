"""The paper's numbers, printed beside ours in results.json and the summary."""

# The paper's numbers (paper.txt: Table 1, Table 2, Table 3) and, for the
# figures (no numbers in the text), the claims their captions make.
PAPER = {
    "table1": {
        "columns": ["untrained", "1 epoch", "2 epochs", "5 epochs", "10 epochs",
                    "15 epochs", "20 epochs", "adv. trained"],
        "clean": [0.818, 0.816, 0.824, 0.830, 0.824, 0.822, 0.827, 0.829],
        "bpda_identity": [0.306, 0.307, 0.400, 0.464, 0.623, 0.631, 0.629, 0.805],
        "linf": [0.005, 0.033, 0.036, 0.067, 0.130, 0.133, 0.136, 0.272],
    },
    "table2": {
        "No defense": {"clean": 0.929, "transfer": 0.013, "hsj": 0.036,
                       "ga": 0.058},
        "Madry et al.": {"clean": 0.817, "transfer": 0.775, "hsj": 0.721,
                         "ga": 0.784},
        "Ours": {"clean": 0.829, "transfer": 0.781, "hsj": 0.820, "ga": 0.819},
    },
    "table3": {
        "No defense": {"clean": 0.929, "robust": 0.0, "attack": "PGD"},
        "Madry et al.": {"clean": 0.817, "robust": 0.427, "attack": "PGD"},
        "Ours (under BPDA)": {"clean": 0.829, "robust": 0.802, "attack": "BPDA"},
        "Ours": {"clean": 0.829, "robust": 0.734, "attack": "Transfer"},
    },
    "fig5": "Robust under BPDA (softsign, tanh) as long as N > 5; BPDA finds "
            "adversarial examples when N is small.",
    "fig6": "BPDA-I and WT accuracy rise with Δ while clean accuracy falls "
            "gradually; Δ = 0.2 is best; BPDA-I and WT are similar.",
    "fig7": "Δ 0.1: more EOT samples attack better until a plateau; Δ 0.2: EOT "
            "stays persistently inefficient.",
}
