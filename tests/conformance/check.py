"""Compares kosoku's per-case results with the committed expectations.

A case passes when its behaviour is at least as good as expected (OK > NON-STRICT >
INFORMATIONAL > UNIMPLEMENTED > FAILED); a case missing from the run, or one worse than
expected, fails the check. `--update` rewrites the expectations from this run.
"""
import glob
import json
import sys

RANK = {"OK": 4, "NON-STRICT": 3, "INFORMATIONAL": 2, "UNIMPLEMENTED": 1, "FAILED": 0}


def results(reports):
    out = {}
    for path in glob.glob(f"{reports}/*_case_*.json"):
        with open(path) as f:
            case = json.load(f)
        out[case["id"]] = {"behavior": case["behavior"], "close": case["behaviorClose"]}
    return out


def worst(r):
    return min(RANK.get(r["behavior"], 0), RANK.get(r["close"], 0))


def main():
    reports, expected_path = sys.argv[1], sys.argv[2]
    got = results(reports)
    if "--update" in sys.argv:
        with open(expected_path, "w") as f:
            json.dump(dict(sorted(got.items(), key=lambda kv: [int(p) for p in kv[0].split(".")])), f, indent=1)
            f.write("\n")
        print(f"wrote {len(got)} expectations to {expected_path}")
        return 0
    with open(expected_path) as f:
        expected = json.load(f)
    failures = []
    for case, want in expected.items():
        have = got.get(case)
        if have is None:
            failures.append(f"{case}: not run")
        elif worst(have) < worst(want):
            failures.append(f"{case}: {have} (expected {want})")
    counts = {}
    for r in got.values():
        counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
    print(f"autobahn: {len(got)} cases, {counts}")
    for line in failures:
        print("REGRESSION", line)
    passed = len(expected) - len(failures)
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
