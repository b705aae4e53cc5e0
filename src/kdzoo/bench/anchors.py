"""Published CIFAR-100 top-1 numbers (../shared/anchors.md), as data: recipes and reports cite them."""
from __future__ import annotations

# Columns of the RepDistiller table: (teacher, student).
PAIRS = {
    "A": ("resnet32x4", "resnet8x4"), "B": ("wrn_40_2", "wrn_16_2"), "C": ("resnet56", "resnet20"),
    "D": ("resnet110", "resnet32"), "E": ("vgg13", "vgg8"), "F": ("resnet32x4", "ShuffleV1"),
    "G": ("wrn_40_2", "ShuffleV1"), "H": ("vgg13", "MobileNetV2"), "I": ("ResNet50", "MobileNetV2"),
    "J": ("resnet32x4", "ShuffleV2"),
}

_TABLE = """
teacher|79.42|75.61|72.34|74.31|74.64|79.42|75.61|74.64|79.34|79.42
student|72.50|73.26|69.06|71.14|70.36|70.50|70.50|64.60|64.60|71.82
kd|73.33|74.92|70.66|73.08|72.98|74.07|74.83|67.37|67.35|74.45
fitnet|73.50|73.58|69.21|71.06|71.02|73.59|73.73|64.14|63.16|73.54
at|73.44|74.08|70.55|72.31|71.43|71.73|73.32|59.40|58.58|72.73
sp|72.94|73.83|69.67|72.69|72.68|73.48|74.52|66.30|68.08|74.56
cc|72.97|73.56|69.63|71.48|70.71|71.14|71.38|64.86|65.43|71.29
vid|73.09|74.11|70.38|72.61|71.23|73.38|73.61|65.56|67.57|73.40
rkd|71.90|73.35|69.61|71.82|71.48|72.28|72.21|64.52|64.43|73.21
pkt|73.64|74.54|70.34|72.61|72.88|74.10|73.89|67.13|66.52|74.69
ab|73.17|72.50|69.47|70.98|70.94|73.55|73.34|66.06|67.20|74.31
ft|72.86|73.25|69.84|72.37|70.58|71.75|72.03|61.78|60.99|72.50
fsp|72.62|72.91|69.95|71.89|70.23|-|-|-|-|-
nst|73.30|73.68|69.60|71.96|71.53|74.12|74.89|58.16|64.96|74.68
crd|75.51|75.48|71.16|73.48|73.94|75.11|76.05|69.73|69.11|75.65
crd_kd|75.46|75.64|71.63|73.75|74.29|75.12|76.27|69.94|69.54|76.05
dcd|74.23|74.99|71.18|73.12|73.22|74.26|74.98|68.35|67.39|75.26
dcd_kd|75.09|76.06|71.81|73.62|73.95|76.01|76.51|69.77|70.03|76.95
rrd|74.48|75.33|70.71|73.10|73.99|74.11|74.98|67.93|68.84|74.80
rrd_kd|75.08|75.66|72.19|73.54|74.32|75.18|76.31|69.98|69.13|76.83
dkd|76.32|76.23|71.97|74.11|74.68|76.45|76.70|69.71|70.35|77.07
ttm|76.17|76.23|71.83|73.97|74.33|74.18|75.39|68.98|69.24|76.57
wttm|76.06|76.37|71.92|74.13|74.44|74.37|75.42|69.16|69.59|76.55
kd_ls|76.62|-|-|-|-|-|-|-|-|-
dkd_ls|77.01|-|-|-|-|-|-|-|-|-
dot|75.12|-|-|-|73.77|-|-|-|-|75.55
ctkd|-|75.45|71.19|73.52|73.52|74.48|75.78|68.46|68.47|75.31
mlkd|77.08|76.63|72.19|74.11|75.18|-|-|70.57|71.04|78.44
nd|75.54|-|72.53|-|-|75.45|-|-|70.10|76.42
catkd|76.91|-|-|-|-|-|-|-|-|-
ickd|75.25|75.64|71.76|73.89|73.42|-|-|-|-|-
ickd_kd|75.48|75.57|71.69|74.11|73.88|-|-|-|-|-
mlkd_ls|78.28|76.95|72.33|74.32|75.22|-|-|70.94|71.19|78.76
ctkd_ls|76.67|76.08|71.34|74.01|74.47|-|-|68.98|69.36|76.18
"""

SOURCES = {"crd_kd": "giakoumoglou/distillers README (e6bd9f9)", "dcd": "giakoumoglou/distillers README (e6bd9f9)",
           "dcd_kd": "giakoumoglou/distillers README (e6bd9f9)", "rrd": "giakoumoglou/distillers README (e6bd9f9)",
           "rrd_kd": "giakoumoglou/distillers README (e6bd9f9)", "dkd": "megvii-research/mdistiller README",
           "ttm": "zkxufo/TTM README", "wttm": "zkxufo/TTM README",
           "kd_ls": "sunshangquan/logit-standardization-KD README",
           "dkd_ls": "sunshangquan/logit-standardization-KD README",
           "dot": "megvii-research/mdistiller README (KD+DOT)",
           "ctkd": "zhengli97/CTKD paper and project page (KD+CTKD)",
           "mlkd": "MLKD paper, as quoted by the sunshangquan/logit-standardization-KD README",
           "nd": "WangYZ1608/Knowledge-Distillation-via-ND README (KD++)",
           "catkd": "CAT-KD paper (Guo et al., CVPR 2023)",
           "ickd": "ADLab-AutoDrive/ICKD Cifar100 README (ICKD-C)",
           "ickd_kd": "ADLab-AutoDrive/ICKD Cifar100 README (ICKD-C + KL)",
           "mlkd_ls": "sunshangquan/logit-standardization-KD README",
           "ctkd_ls": "sunshangquan/logit-standardization-KD README"}
DEFAULT_SOURCE = "HobbitLong/RepDistiller README"


def _parse() -> dict[tuple[str, str, str], float]:
    out = {}
    for line in _TABLE.strip().splitlines():
        name, *cells = line.split("|")
        for column, cell in zip(PAIRS, cells):
            if cell != "-":
                out[(name, *PAIRS[column])] = float(cell)
    return out


# (row, teacher, student) -> top-1
CIFAR100 = _parse()
CIFAR100.update({("kd", "wrn_40_2", "wrn_40_1"): 73.54, ("crd", "wrn_40_2", "wrn_40_1"): 74.14,
                 ("dkd", "wrn_40_2", "wrn_40_1"): 74.81, ("dcd_kd", "wrn_40_2", "wrn_40_1"): 74.76,
                 ("rrd_kd", "wrn_40_2", "wrn_40_1"): 74.67, ("ctkd", "wrn_40_2", "wrn_40_1"): 73.93,
                 ("mlkd", "wrn_40_2", "wrn_40_1"): 75.35, ("nd", "wrn_40_2", "wrn_40_1"): 74.59,
                 ("ickd", "wrn_40_2", "wrn_40_1"): 74.33, ("ickd_kd", "wrn_40_2", "wrn_40_1"): 74.63,
                 ("mlkd_ls", "wrn_40_2", "wrn_40_1"): 75.56, ("ctkd_ls", "wrn_40_2", "wrn_40_1"): 74.58})

# SimKD's table: teacher resnet32x4 (79.42), its own student baselines.
SIMKD = {("student", "resnet8x4"): 73.09, ("student", "vgg8"): 70.46, ("student", "ShuffleV2_1_5"): 74.15,
         ("kd", "resnet8x4"): 74.42, ("kd", "vgg8"): 72.73, ("kd", "ShuffleV2_1_5"): 76.82,
         ("crd", "resnet8x4"): 75.59, ("crd", "vgg8"): 73.54, ("crd", "ShuffleV2_1_5"): 77.66,
         ("srrl", "resnet8x4"): 75.39, ("srrl", "vgg8"): 73.23, ("srrl", "ShuffleV2_1_5"): 77.55,
         ("semckd", "resnet8x4"): 76.23, ("semckd", "vgg8"): 75.27, ("semckd", "ShuffleV2_1_5"): 79.13,
         ("simkd", "resnet8x4"): 78.08, ("simkd", "vgg8"): 75.76, ("simkd", "ShuffleV2_1_5"): 79.54}

TEACHERS = {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "wrn_40_2": 75.61, "vgg13": 74.64,
            "ResNet50": 79.34}


def published(row: str, teacher: str, student: str) -> tuple[float, str] | None:
    """The published top-1 of a recipe row on a pair, with its source, or None."""
    if (row, teacher, student) in CIFAR100:
        return CIFAR100[(row, teacher, student)], SOURCES.get(row, DEFAULT_SOURCE)
    if teacher == "resnet32x4" and (row, student) in SIMKD:
        return SIMKD[(row, student)], "DefangChen/SimKD README"
    return None


# HSAKD (winycg/HSAKD README), CIFAR-100 top-1: (teacher, student) -> (HSAKD: teacher option 1, HSAKD*:
# option 2); few-shot resnet56 -> resnet20 with HSAKD*; online mutual KD, one network of the pair.
HSAKD = {("wrn_40_2", "wrn_16_2"): (77.20, 78.67), ("wrn_40_2", "wrn_40_1"): (77.00, 78.12),
         ("resnet56", "resnet20"): (72.58, 73.73), ("resnet32x4", "resnet8x4"): (77.26, 77.69),
         ("vgg13", "MobileNetV2"): (77.45, 79.27), ("ResNet50", "MobileNetV2"): (78.79, 79.43),
         ("wrn_40_2", "ShuffleV1"): (78.51, 80.11), ("resnet32x4", "ShuffleV2"): (79.93, 80.86)}
HSAKD_FEW_SHOT = {0.25: 68.50, 0.50: 72.18, 0.75: 73.26, 1.00: 73.73}
HSAKD_ONLINE = {"wrn_40_2": 82.58, "wrn_40_1": 76.67, "resnet56": 78.16, "resnet32x4": 84.91, "vgg13": 80.44,
                "MobileNetV2": 78.85, "ShuffleV1": 78.34, "ShuffleV2": 79.98}
HSAKD_SOURCE = "winycg/HSAKD README"

# ImageNet ResNet34 -> ResNet18 top-1 (../shared/anchors.md): row -> (top-1, source); torchvision's ResNet34
# weights (the teacher) have 73.31, its ResNet18 69.76.
IMAGENET = {"student": (69.76, "torchvision ResNet18 weights"), "kd": (71.37, "torchdistill; mdistiller 71.03"),
            "dkd": (71.70, "megvii-research/mdistiller README"), "reviewkd": (71.61, "ReviewKD paper"),
            "crd": (71.17, "CRD paper"), "dist": (72.07, "DIST paper"), "hsakd": (72.16, "winycg/HSAKD README"),
            "nkd": (71.96, "yzd-v/cls_KD nkd.md"), "dot": (71.72, "megvii-research/mdistiller README (KD+DOT)"),
            "ctkd": (71.32, "zhengli97/CTKD README (KD+CTKD; its teacher 73.96)"),
            "nd": (71.98, "WangYZ1608/Knowledge-Distillation-via-ND README (KD++)"),
            "catkd": (71.26, "CAT-KD paper"), "srd": (71.63, "SRD paper (torchdistill reproduces 71.92)"),
            "dist_plus": (72.39, "DIST+ paper (torchdistill's DISTPlusLoss: 71.37)"),
            "uskd": (70.79, "yzd-v/cls_KD nkd.md (ResNet18 alone: 69.90)")}
IMAGENET_TEACHER = 73.31
