"""The SplitLoRA paper's E2E test results (arXiv 2407.00952), as printed.

Each entry is (BLEU, NIST, METEOR, ROUGE_L, CIDEr) with BLEU and ROUGE_L x100, METEOR a
fraction: the layout of the paper's table. The paper scored against the space-tokenised
references of the LoRA ``context||completion`` files (our ``refs_style=tokenized``).
"""

from __future__ import annotations

METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
METHODS = ("cenlora", "splitlora", "fedlora")
METHOD_LABELS = {"cenlora": "CenLoRA", "splitlora": "SplitLoRA", "fedlora": "FedLoRA"}
MODEL_LABELS = {"gpt2": "GPT2-S", "gpt2-medium": "GPT2-M", "gpt2-large": "GPT2-L", "tiny": "tiny"}

Scores = tuple[float, float, float, float, float]

# model -> method -> LoRA rank -> scores
PAPER: dict[str, dict[str, dict[int, Scores]]] = {
    "gpt2": {
        "cenlora": {1: (67.95, 8.6973, 0.4421, 68.96, 2.3412), 2: (68.49, 8.7481, 0.4491, 68.70, 2.3952),
                    4: (69.41, 8.7824, 0.4610, 70.70, 2.4713), 8: (69.37, 8.7735, 0.4624, 70.96, 2.4572)},
        "splitlora": {1: (67.18, 8.6601, 0.4416, 67.71, 2.3255), 2: (66.86, 8.5667, 0.4515, 68.50, 2.3358),
                      4: (68.79, 8.7259, 0.4572, 69.84, 2.4411), 8: (68.76, 8.6931, 0.4588, 70.17, 2.4165)},
        "fedlora": {1: (65.66, 8.4123, 0.4265, 67.68, 2.1921), 2: (67.24, 8.6055, 0.4398, 69.33, 2.3025),
                    4: (67.73, 8.6148, 0.4494, 68.59, 2.3817), 8: (68.39, 8.6745, 0.4590, 70.24, 2.4450)},
    },
    "gpt2-medium": {
        "cenlora": {1: (69.86, 8.7679, 0.4650, 71.20, 2.5028), 2: (69.97, 8.7787, 0.4663, 71.56, 2.5029),
                    4: (69.78, 8.7820, 0.4667, 71.62, 2.5301), 8: (70.57, 8.8557, 0.4688, 72.17, 2.5405)},
        "splitlora": {1: (70.26, 8.8274, 0.4664, 71.73, 2.5267), 2: (70.04, 8.8031, 0.4670, 71.68, 2.5233),
                      4: (70.09, 8.8075, 0.4667, 71.60, 2.5370), 8: (69.18, 8.7189, 0.4631, 71.30, 2.5156)},
        "fedlora": {1: (67.02, 8.6467, 0.4484, 68.06, 2.3431), 2: (69.64, 8.7727, 0.4633, 71.35, 2.4900),
                    4: (69.78, 8.7836, 0.4642, 71.87, 2.4819), 8: (69.55, 8.7358, 0.4661, 71.46, 2.4980)},
    },
}


def paper_scores(model: str, method: str, r: int) -> Scores | None:
    """The published cell, or None where the paper has none (other models or ranks)."""
    return PAPER.get(model, {}).get(method, {}).get(r)


def to_paper_scale(scores: dict[str, float | None]) -> tuple[float | None, ...]:
    """Our scorer's record (BLEU, ROUGE_L as fractions) in the paper's scale and order."""
    scale = {"BLEU": 100.0, "ROUGE_L": 100.0}
    return tuple(None if scores.get(m) is None else float(scores[m]) * scale.get(m, 1.0) for m in METRICS)
