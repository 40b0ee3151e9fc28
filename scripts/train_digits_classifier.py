"""Train one of the two digits networks and write it to src/ddpm/assets/digits_classifier.

    python scripts/train_digits_classifier.py --kind features      # clean digits: FD/KID/precision-recall
    python scripts/train_digits_classifier.py --kind recognizer    # with pixel noise: class accuracy, IS

Trains on the instrument's half of the bundled digits (`ddpm.evaluate.digits_classifier.instrument_split`:
250 per class at random, seed 0) and reports the accuracy on the other 2,500, the reference set that every
score and floor compares with. The shipped networks were trained with `--threads 2`.
"""

import argparse
import time

import torch

from ddpm.evaluate import digits_classifier as dc

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--kind", choices=sorted(dc.KINDS), required=True)
p.add_argument("--epochs", type=int, default=30)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--out", default=str(dc.asset_dir()))
a = p.parse_args()
torch.set_num_threads(a.threads)
t0 = time.time()
net, record = dc.train_classifier(kind=a.kind, epochs=a.epochs, seed=a.seed)
record["seconds"] = round(time.time() - t0, 1)
record["torch"] = torch.__version__
print(f"held-out accuracy {record['heldout_accuracy']:.4f} (train {record['train_accuracy']:.4f}), "
      f"{record['parameters']} parameters, {record['seconds']} s")
print(dc.save(net, record, a.out, kind=a.kind))
