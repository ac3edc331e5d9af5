"""CI's supply-chain step: `pip-audit` over the installed environment, summarised in a few
lines. Fails (exit 1) only on a known vulnerability; when the audit cannot run or can check
nothing (no network, or a package index whose versions the vulnerability service does not
know), it says exactly that and passes, so a CI without network still builds, and nobody
mistakes "not audited" for "clean".

    .venv/bin/python scripts/supply_chain.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

TIMEOUT_S = 600


def main() -> int:
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "pip-audit"), "--local", "--format", "json", "--progress-spinner", "off"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        print("supply chain: pip-audit is not installed (it comes with the [test] extra)")
        return 1
    except subprocess.TimeoutExpired:
        print(f"supply chain: NOT AUDITED: pip-audit did not finish in {TIMEOUT_S} s")
        return 0
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"supply chain: NOT AUDITED: pip-audit could not run ({last[:300]})")
        return 0
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    audited = [d for d in deps if not d.get("skip_reason")]
    vulnerable = [d for d in audited if d.get("vulns")]
    for d in vulnerable:
        for v in d["vulns"]:
            fixes = ", ".join(v.get("fix_versions") or []) or "no fix yet"
            print(f"supply chain: VULNERABLE {d['name']} {d['version']}: {v['id']} (fix: {fixes})")
    reasons = Counter(
        "not known to the vulnerability service (version not on PyPI)"
        if "not found on PyPI" in d["skip_reason"]
        else d["skip_reason"]
        for d in skipped
    )
    print(
        f"supply chain: pip-audit checked {len(audited)} of {len(deps)} installed packages: "
        f"{len(vulnerable)} with known vulnerabilities"
    )
    for reason, n in reasons.most_common():
        print(f"supply chain:   {n} not checked: {reason}")
    if deps and not audited:
        print(
            "supply chain: NOT AUDITED: no installed version could be checked (this index "
            "serves versions PyPI's vulnerability data does not list); run pip-audit where "
            "the environment comes from PyPI"
        )
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
