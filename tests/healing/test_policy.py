from __future__ import annotations

import re
from pathlib import Path

import pytest

from nids.core.features import ATTACK_CLASSES
from nids.core.settings import Settings
from nids.healing import HealingEngine, PolicyError, load_policy
from nids.healing.policy import parse_policy

from .conftest import POLICY_FILE

TEXT = POLICY_FILE.read_text(encoding="utf-8")


def line_of(text: str, fragment: str) -> int:
    """Line of the last occurrence (a duplicate is reported where it repeats)."""
    return max(number for number, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_default_policy_maps_every_class_as_the_original_system():
    policy = load_policy(POLICY_FILE)
    actions = {name: policy.rule_for(name).action for name in ATTACK_CLASSES}
    assert {name for name, action in actions.items() if action == "restart_service"} == {
        "DDoS",
        "DoS Hulk",
        "DoS slowloris",
        "DoS Slowhttptest",
        "DoS GoldenEye",
    }
    assert {name for name, action in actions.items() if action == "block_ip"} == {"FTP-Patator", "SSH-Patator"}
    assert {name for name, action in actions.items() if action == "alert_admin"} == {
        "PortScan",
        "Bot",
        "Web Attack – Brute Force",
        "Web Attack – XSS",
        "Web Attack – Sql Injection",
        "Infiltration",
    }
    assert actions["BENIGN"] == "log_only"
    assert policy.rule_for("DDoS").params.service == "apache2"
    assert policy.enforce == [], "the shipped policy must be dry-run only"


def test_dash_variants_of_class_names_are_accepted():
    policy = parse_policy(TEXT.replace("Web Attack – XSS", "Web Attack - XSS"))
    assert policy.rule_for("Web Attack – XSS").name == "intrusion-alert"


@pytest.mark.parametrize(
    ("old", "new", "line_fragment", "key", "rule"),
    [
        ("DoS Hulk,", "DoS Hulkk,", "DoS Hulkk", "rules.0.attacks.1", "unknown CIC-IDS2017 label 'DoS Hulkk'"),
        ("action: block_ip", "action: nuke_ip", "- name: brute-force-block", "rules.1", "'nuke_ip'"),
        ("{service: apache2}", "{service: sshd}", "{service: sshd}", "rules.0.params.service", "not in services"),
        ("{service: apache2}", "{service: 'apache2; rm -rf /'}", "rm -rf", "rules.0.params.service", "pattern"),
        ("severity: high", "severity: urgent", "severity: urgent", "rules.2.params.severity", "'critical'"),
        ("  seconds: 3600", "  seconds: -5", "seconds: -5", "block.seconds", "greater than 0"),
        ("allowlist: []", "allowlist: [10.0.0.0/33]", "10.0.0.0/33", "allowlist.0", "not an IPv4/IPv6"),
        ("min_confidence: 0.8", "min_confidence: 1.5", "min_confidence", "min_confidence", "less than or equal"),
        ("enforce: []", "enforce: [reboot]", "enforce: [reboot]", "enforce.0", "'block_ip'"),
        ("enforce: []", "enforce: [alert_admin]", "enforce: [alert_admin]", "enforce", "webhook.url is not set"),
        ("      - Bot\n", "", "rules:", "rules", "no rule maps these attack types: ['Bot']"),
        ("[FTP-Patator,", "[DDoS, FTP-Patator,", "[DDoS, FTP-Patator", "rules.1.attacks.0", "already mapped"),
        ("name: benign-log", "name: dos-restart", "name: dos-restart", "rules.3.name", "used twice"),
        ("action: log_only", "action: log_only\n    params: {x: 1}", "params: {x: 1}", "rules.3.params.x", "Extra"),
        ("version: 1", "version: 1\ncolour: blue", "colour: blue", "colour", "Extra inputs"),
        ("[DDoS,", "[Heartbleed, DDoS,", "Heartbleed", "rules.0.attacks.0", "not one of the 14 classes"),
    ],
)
def test_invalid_policy_names_line_key_and_rule(old: str, new: str, line_fragment: str, key: str, rule: str):
    assert old in TEXT
    text = TEXT.replace(old, new, 1)
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, "healing.yaml")
    message = str(raised.value)
    assert f"healing.yaml:{line_of(text, line_fragment)}: {key}: " in message
    assert rule in message


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(PolicyError, match=r"healing.yaml:2: not valid YAML: mapping values are not allowed"):
        parse_policy("version: 1\nrules: a: b\n", "healing.yaml")


def test_missing_policy_file_refuses_to_start(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, healing_policy_file=tmp_path / "absent.yaml")
    with pytest.raises(PolicyError, match=r"absent\.yaml: cannot read"):
        HealingEngine.from_settings(settings)


def test_service_refuses_to_start_on_invalid_policy(tmp_path: Path):
    bad = tmp_path / "healing.yaml"
    bad.write_text(TEXT.replace("action: log_only", "action: log_everything"), encoding="utf-8")
    with pytest.raises(PolicyError, match=rf"{re.escape(str(bad))}:\d+: rules\.3: .*'log_everything'"):
        HealingEngine.from_settings(Settings(data_dir=tmp_path, healing_policy_file=bad))
    assert not (tmp_path / "healing-audit.sqlite3").exists()
