"""`kdzoo.losses`: the methods' losses as pure functions of tensors, each with its math and source in its
docstring (`help(kdzoo.losses.dkd_loss)`). Use them in your own loop on logits or features you computed; for a
method with adapters (FitNet's regressor, CRD's embeddings and banks) use `kdzoo.Distiller`, which owns them."""

from kdzoo.distillers.ab import ab_loss
from kdzoo.distillers.at import at_loss, at_pair_loss
from kdzoo.distillers.aux_ce import aux_ce_loss
from kdzoo.distillers.byol import byol_imix_loss
from kdzoo.distillers.cc import cc_loss
from kdzoo.distillers.crd import nce_loss_scores
from kdzoo.distillers.dcd import dcd_loss
from kdzoo.distillers.dist import dist_loss
from kdzoo.distillers.dkd import dkd_loss
from kdzoo.distillers.fitnet import hint_loss
from kdzoo.distillers.fsp import fsp_loss
from kdzoo.distillers.ft import factor_transfer_loss
from kdzoo.distillers.kd import kd_loss
from kdzoo.distillers.mixup import soft_cross_entropy
from kdzoo.distillers.nkd import nkd_loss
from kdzoo.distillers.nst import nst_loss, nst_pair_loss
from kdzoo.distillers.pkt import pkt_loss
from kdzoo.distillers.proto import proto_loss
from kdzoo.distillers.reviewkd import hcl_loss
from kdzoo.distillers.rkd import rkd_angle_loss, rkd_distance_loss, rkd_loss
from kdzoo.distillers.rrd import relational_loss
from kdzoo.distillers.semckd import semckd_loss
from kdzoo.distillers.simkd import simkd_loss
from kdzoo.distillers.sp import sp_loss
from kdzoo.distillers.srrl import srrl_loss
from kdzoo.distillers.ttm import ttm_loss
from kdzoo.distillers.vid import gaussian_nll

__all__ = [
    "ab_loss",
    "at_loss",
    "at_pair_loss",
    "aux_ce_loss",
    "byol_imix_loss",
    "cc_loss",
    "dcd_loss",
    "dist_loss",
    "dkd_loss",
    "factor_transfer_loss",
    "fsp_loss",
    "gaussian_nll",
    "hcl_loss",
    "hint_loss",
    "kd_loss",
    "nce_loss_scores",
    "nkd_loss",
    "nst_loss",
    "nst_pair_loss",
    "pkt_loss",
    "proto_loss",
    "relational_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "semckd_loss",
    "simkd_loss",
    "soft_cross_entropy",
    "sp_loss",
    "srrl_loss",
    "ttm_loss",
]
