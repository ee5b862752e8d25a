"""Check a stored model: `python -m nids.check attack_classifier:latest [--sklearn]`.

Verifies the sha256 of every model file recorded at save, builds the predictor, runs the stored reference
cases, prints a PASS/FAIL table and exits 1 on any failure (2 when the tag cannot be resolved).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nids.models.artifacts import (
    CaseResult,
    FileCheck,
    ModelIntegrityError,
    ModelLoadError,
    ReferenceCaseError,
    get_store_model,
    load_model,
    verify_files,
)

EXIT_OK, EXIT_FAILED, EXIT_NOT_FOUND = 0, 1, 2


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def file_table(checks: Sequence[FileCheck]) -> list[str]:
    lines = [f"{'file':<24} {'result':<6} detail"]
    for check in checks:
        detail = "missing" if check.actual_sha256 is None else f"sha256 {check.actual_sha256[:16]}..."
        if check.actual_sha256 is not None and not check.passed:
            detail += f" (recorded {check.expected_sha256[:16]}...)"
        lines.append(f"{check.name:<24} {_verdict(check.passed):<6} {detail}")
    return lines


def case_table(results: Sequence[CaseResult]) -> list[str]:
    lines = [f"{'#':>3} {'result':<6} {'class exp/got':<13} {'score expected':>14} {'got':>10} {'tol':>7}  description"]
    for number, result in enumerate(results, 1):
        lines.append(
            f"{number:>3} {_verdict(result.passed):<6} {f'{result.expected_class}/{result.got_class}':<13} "
            f"{result.expected_score:>14.6f} {result.got_score:>10.6f} {result.tolerance:>7.0e}  {result.description}"
        )
    return lines


def check(tag: str, *, prefer_onnx: bool = True) -> int:
    """Print the report for `tag`; return the process exit code."""
    try:
        model = get_store_model(tag)
    except ModelLoadError as exc:
        print(f"FAIL {exc}")
        return EXIT_NOT_FOUND
    print(f"model {model.tag}")
    try:
        print("\n".join(file_table(verify_files(model))))
    except ModelIntegrityError as exc:
        print(f"FAIL {exc}")
        return EXIT_FAILED
    try:
        loaded = load_model(str(model.tag), prefer_onnx=prefer_onnx)
    except ReferenceCaseError as exc:
        print("\n".join(case_table(exc.results)))
        print(f"FAIL {exc}")
        return EXIT_FAILED
    except ModelLoadError as exc:
        print(f"FAIL {exc}")
        return EXIT_FAILED
    print(f"inference form: {loaded.inference_form}")
    print("\n".join(case_table(loaded.reference_results)))
    print(f"PASS {loaded.tag}: files intact, {len(loaded.reference_results)} reference cases pass")
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tag", help="model tag, e.g. threat_detector:latest")
    parser.add_argument("--sklearn", action="store_true", help="check the scikit-learn form even if ONNX is stored")
    args = parser.parse_args(argv)
    sys.exit(check(args.tag, prefer_onnx=not args.sklearn))


if __name__ == "__main__":
    main()
