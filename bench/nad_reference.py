"""The NAD authors' own code (github.com/bboylyg/NAD, commit f17b713) on this project's data and
CPU: the reference that `docs/FIDELITY.md` section 5 compares our NAD with, on the same model.

    git clone https://github.com/bboylyg/NAD && cd NAD
    python /path/to/nba_scale/bench/nad_reference.py SEED [as-code|readme] [--npz PATH] [--threads N]

Their modules run unmodified; four things are patched from outside: `.cuda()` is a no-op (no
GPU here), `torchvision.datasets.CIFAR10` reads the `.npz` (`../shared/data`: the loaders have no
network), `utils.util.accuracy` uses `.reshape` (its `.view` fails on a non-contiguous tensor
in torch >= 1.x), and `readme` mode turns their `Cutout(1, 3)` off (their README's setting; the
code's default, `as-code`, keeps it). The teacher is their `main.py` loop with every beta 0 (plain
CE fine-tuning, 10 epochs) from their published BadNets `weight/s_net`; NAD is the same loop with
betas (500, 1000, 1000), 20 epochs, from `s_net` with that teacher; both draw the same 5 % subset
(re-seeded). Prints one JSON line: the last epoch's clean accuracy on the 9,000 non-target test
images and ASR (their `test`), for the teacher and for NAD, with every epoch's history.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
args.add_argument("seed", type=int)
args.add_argument("mode", nargs="?", default="as-code", choices=["as-code", "readme"])
args.add_argument("--npz", default="~/.cache/nba_scale/cifar10_jpeg.npz")
args.add_argument("--threads", type=int, default=1)
args.add_argument("--out", default="nad_reference_out")
args.add_argument("--teacher-epochs", type=int, default=10)
args.add_argument("--nad-epochs", type=int, default=20)
a = args.parse_args()
sys.argv = sys.argv[:1]  # their config parser reads sys.argv otherwise
sys.path.insert(0, os.getcwd())
torch.set_num_threads(a.threads)
torch.Tensor.cuda = lambda self, *_, **__: self
torch.nn.Module.cuda = lambda self, *_, **__: self

from PIL import Image  # noqa: E402

D = np.load(os.path.expanduser(a.npz))


class NPZCIFAR(torch.utils.data.Dataset):
    def __init__(self, root=None, train=True, download=False, transform=None):
        self.x, self.y = D["x_train" if train else "x_test"], D["y_train" if train else "y_test"]
        self.transform = transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = Image.fromarray(self.x[i])
        return (self.transform(img) if self.transform else img), int(self.y[i])


import data_loader  # noqa: E402  (theirs)
import main as their_main  # noqa: E402
from at import AT  # noqa: E402
from config import get_arguments  # noqa: E402
from models.selector import select_model  # noqa: E402
from utils.util import adjust_learning_rate  # noqa: E402

data_loader.datasets.CIFAR10 = NPZCIFAR


def accuracy(output, target, topk=(1,)):
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
    return [correct[:k].reshape(-1).float().sum(0).mul_(100.0 / target.size(0)) for k in topk]


their_main.accuracy = accuracy
if a.mode == "readme":
    data_loader.Cutout.__call__ = lambda self, img: img


def run(opt):
    """Their main.py's train/test loop, returning the student and (clean acc, ASR) per epoch."""
    teacher = select_model(opt.data_name, opt.t_name, True, opt.t_model, opt.num_class)
    student = select_model(opt.data_name, opt.s_name, True, opt.s_model, opt.num_class)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad = False
    nets = {"snet": student, "tnet": teacher}
    optimizer = torch.optim.SGD(student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay, nesterov=True)
    crit = {"criterionCls": torch.nn.CrossEntropyLoss(), "criterionAT": AT(opt.p)}
    train_loader = data_loader.get_train_loader(opt)
    clean_loader, bad_loader = data_loader.get_test_loader(opt)
    hist = []
    for epoch in range(opt.epochs):
        adjust_learning_rate(optimizer, epoch, opt.lr)
        their_main.train_step(opt, train_loader, nets, optimizer, crit, epoch + 1)
        acc_clean, acc_bad = their_main.test(opt, clean_loader, bad_loader, nets, crit, epoch + 1)
        hist.append((acc_clean[0], acc_bad[0]))
    return student, hist


out = os.path.abspath(f"{a.out}/{a.seed}_{a.mode}")
os.makedirs(out, exist_ok=True)
s_net = "weight/s_net/WRN-16-1-S-model_best.pth.tar"
common = ["--cuda", "0", "--device", "cpu", "--log_root", out, "--checkpoint_root", out, "--save", "0",
          "--target_label", "5", "--ratio", "0.05", "--print_freq", "1000", "--s_model", s_net]
torch.manual_seed(a.seed)
np.random.seed(a.seed)
opt = get_arguments().parse_args(common + ["--t_model", s_net, "--epochs", str(a.teacher_epochs),
                                           "--beta1", "0", "--beta2", "0", "--beta3", "0"])
teacher, teacher_hist = run(opt)
torch.save({"state_dict": teacher.state_dict(), "epoch": a.teacher_epochs}, f"{out}/teacher.tar")
torch.manual_seed(a.seed)  # the same 5 % subset as the teacher's
np.random.seed(a.seed)
opt = get_arguments().parse_args(common + ["--t_model", f"{out}/teacher.tar", "--epochs", str(a.nad_epochs),
                                           "--beta1", "500", "--beta2", "1000", "--beta3", "1000"])
_, nad_hist = run(opt)
print(json.dumps({"seed": a.seed, "mode": a.mode, "teacher": teacher_hist[-1], "nad": nad_hist[-1],
                  "teacher_hist": teacher_hist, "nad_hist": nad_hist}))
