"""The fixed feature and class contracts of both models.

Everything that must agree between training, the model store and the service lives here:
feature names and their order, the attack classes and their codes, and how raw dataset labels
map onto those classes.
"""

from __future__ import annotations

import re

THREAT_MODEL_NAME = "threat_detector"
ATTACK_MODEL_NAME = "attack_classifier"

# NSL-KDD threat detector: exactly these features, in this order.
THREAT_FEATURES: tuple[str, ...] = (
    "service",
    "flag",
    "src_bytes",
    "dst_bytes",
    "count",
    "same_srv_rate",
    "diff_srv_rate",
    "dst_host_srv_count",
    "dst_host_same_srv_rate",
    "dst_host_same_src_port_rate",
)
THREAT_CATEGORICAL: tuple[str, ...] = ("service", "flag")
THREAT_CLASSES: tuple[str, ...] = ("normal", "attack")

# CIC-IDS2017 attack classifier: the names users' CICFlowMeter pipelines send (original release,
# leading spaces included), in model order, each with its column in the corrected release.
_ATTACK_FEATURE_TABLE: tuple[tuple[str, str], ...] = (
    (" Destination Port", "Dst Port"),
    (" Flow Duration", "Flow Duration"),
    (" Total Fwd Packets", "Total Fwd Packet"),
    ("Total Length of Fwd Packets", "Total Length of Fwd Packet"),
    (" Fwd Packet Length Max", "Fwd Packet Length Max"),
    (" Fwd Packet Length Min", "Fwd Packet Length Min"),
    ("Bwd Packet Length Max", "Bwd Packet Length Max"),
    (" Bwd Packet Length Min", "Bwd Packet Length Min"),
    ("Flow Bytes/s", "Flow Bytes/s"),
    (" Flow Packets/s", "Flow Packets/s"),
    (" Flow IAT Mean", "Flow IAT Mean"),
    (" Flow IAT Std", "Flow IAT Std"),
    (" Flow IAT Min", "Flow IAT Min"),
    ("Bwd IAT Total", "Bwd IAT Total"),
    (" Bwd IAT Std", "Bwd IAT Std"),
    ("Fwd PSH Flags", "Fwd PSH Flags"),
    (" Bwd PSH Flags", "Bwd PSH Flags"),
    (" Fwd URG Flags", "Fwd URG Flags"),
    (" Bwd URG Flags", "Bwd URG Flags"),
    (" Fwd Header Length", "Fwd Header Length"),
    (" Bwd Header Length", "Bwd Header Length"),
    (" Bwd Packets/s", "Bwd Packets/s"),
    (" Min Packet Length", "Packet Length Min"),
    ("FIN Flag Count", "FIN Flag Count"),
    (" RST Flag Count", "RST Flag Count"),
    (" PSH Flag Count", "PSH Flag Count"),
    (" ACK Flag Count", "ACK Flag Count"),
    (" URG Flag Count", "URG Flag Count"),
    (" Down/Up Ratio", "Down/Up Ratio"),
    ("Fwd Avg Bytes/Bulk", "Fwd Bytes/Bulk Avg"),
    (" Fwd Avg Packets/Bulk", "Fwd Packet/Bulk Avg"),
    (" Fwd Avg Bulk Rate", "Fwd Bulk Rate Avg"),
    (" Bwd Avg Bytes/Bulk", "Bwd Bytes/Bulk Avg"),
    (" Bwd Avg Packets/Bulk", "Bwd Packet/Bulk Avg"),
    ("Bwd Avg Bulk Rate", "Bwd Bulk Rate Avg"),
    ("Init_Win_bytes_forward", "FWD Init Win Bytes"),
    (" Init_Win_bytes_backward", "Bwd Init Win Bytes"),
    (" min_seg_size_forward", "Fwd Seg Size Min"),
    ("Active Mean", "Active Mean"),
    (" Active Std", "Active Std"),
    (" Active Max", "Active Max"),
    (" Idle Std", "Idle Std"),
)
ATTACK_FEATURES: tuple[str, ...] = tuple(original for original, _ in _ATTACK_FEATURE_TABLE)
# original (spaced) name -> corrected-release column
ATTACK_IMPROVED_COLUMNS: dict[str, str] = dict(_ATTACK_FEATURE_TABLE)

ATTACK_CLASSES: tuple[str, ...] = (
    "BENIGN",
    "DoS Hulk",
    "DDoS",
    "PortScan",
    "FTP-Patator",
    "DoS slowloris",
    "DoS Slowhttptest",
    "SSH-Patator",
    "DoS GoldenEye",
    "Web Attack – Brute Force",
    "Bot",
    "Web Attack – XSS",
    "Web Attack – Sql Injection",
    "Infiltration",
)
EN_DASH = "\u2013"
# Labels of either release that leave the 14 classes on purpose (absent from the original 14-class system).
EXCLUDED_LABELS: frozenset[str] = frozenset({"Heartbleed"})

# hyphen, en dash, em dash, the cp1252 byte 0x96 read as latin-1, and U+FFFD from a failed decode
_DASHES = re.compile(r"\s*[-\u2013\u2014\u0096\ufffd]\s*")
_CORRECTED_LABELS: dict[str, str] = {
    "Portscan": "PortScan",
    "Infiltration - Portscan": "PortScan",
    "Botnet": "Bot",
    "DoS Slowloris": "DoS slowloris",
}
_CLASS_BY_FOLDED: dict[str, str] = {name.casefold(): name for name in ATTACK_CLASSES}


def snake_case(name: str) -> str:
    """Clean snake_case alias of a CICFlowMeter column: ' Flow Bytes/s' -> 'flow_bytes_s'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


ATTACK_FEATURE_BY_SNAKE: dict[str, str] = {snake_case(name): name for name in ATTACK_FEATURES}


def normalise_attack_label(raw: str) -> str | None:
    """Map a label of either CIC-IDS2017 release onto one of ATTACK_CLASSES.

    Returns None for labels deliberately left out (Heartbleed); raises ValueError for labels that are unknown.
    """
    label = raw.strip()
    if label in _CORRECTED_LABELS:
        return _CORRECTED_LABELS[label]
    if label in EXCLUDED_LABELS:
        return None
    if label.startswith("Web Attack"):
        # "Web Attack - XSS", "Web Attack \x96 XSS", "Web Attack – Sql Injection" -> the en-dash class name
        label = _DASHES.sub(f" {EN_DASH} ", label, count=1)
        label = " ".join(label.split())
    match = _CLASS_BY_FOLDED.get(label.casefold())
    if match is None:
        raise ValueError(f"unknown CIC-IDS2017 label {raw!r}: not one of the 14 classes nor an excluded label")
    return match
