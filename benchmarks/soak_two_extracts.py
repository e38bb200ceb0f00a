"""Soak: two `msgvip extract` processes on one cache root for several minutes; both must finish.

Each extracts its own demo data set (different clips, same config, so the same store and the same
hash cache) with the tiny demo backbones, sized so each runs for ``--minutes``. Before store v2 the
second died with "database is locked" about a minute in (the hash cache held a transaction for the
whole run); writers now share no file of the store and the hash cache writes in short transactions.

    .venv/bin/python benchmarks/soak_two_extracts.py --minutes 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msgvip.data.synthetic import DemoDataConfig, write_demo_data
from msgvip.extract.backbones import DEMO_CROP_SIZE, make_demo_backbones
from msgvip.store import FeatureStore

CLIPS_PER_MINUTE = 60  # per process, two at once on 2 cores, all four families (measured: 225 clips in 3.8 min)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long each extract should run")
    args = parser.parse_args()
    clips = max(8, int(args.minutes * CLIPS_PER_MINUTE))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = make_demo_backbones(tmp / "models")
        for k in range(2):
            write_demo_data(tmp / f"data{k}", DemoDataConfig(clips=clips, frames=24, seed=k), progress=False)
        command = [sys.executable, "-m", "msgvip", "extract", "--features", "appearance,face,geometry,pose", "--crop-size", str(DEMO_CROP_SIZE),
                   "--backbone", str(models["backbone"]), "--pose-model", str(models["pose_model"]), "--cache-dir", str(tmp / "cache"), "--json"]  # fmt: skip
        start = time.perf_counter()
        procs = [subprocess.Popen([*command, str(tmp / f"data{k}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
        results = []
        for k, proc in enumerate(procs):
            out, err = proc.communicate()
            results.append((proc.returncode, time.perf_counter() - start, out, err))
        for k, (code, seconds, out, err) in enumerate(results):
            summary = json.loads(out) if code in (0, 1) and out.strip() else {}
            print(f"extract {k}: exit {code} after {seconds / 60:.1f} min, written {summary.get('written')} of {clips}, "
                  f"failed {summary.get('failed')}{'' if code == 0 else ': ' + err.strip().splitlines()[-1]}")  # fmt: skip
        store = FeatureStore.open(json.loads(results[0][2])["store"]) if results[0][2].strip() else None
        ok = all(code == 0 for code, *_ in results) and store is not None and store.verify() == []
        print(f"both finished and the store verifies: {ok} ({len(store) if store else 0} clips, datasets {store.snapshot_names() if store else []})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
