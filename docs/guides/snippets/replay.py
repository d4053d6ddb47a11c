# Class-incremental digits: 5 tasks of 2 classes (0-1, 2-3, ...), one shared
# 10-way head, a replay memory of 5 images per old class. Accuracy is over all
# classes seen so far.
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import labelgrad as lg

digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16
y_all = torch.tensor(digits.target)
perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x_all)))
train, test = perm[:1300], perm[1300:]
tasks = [[2 * t, 2 * t + 1] for t in range(5)]


def task_data(idx, classes):
    keep = idx[torch.isin(y_all[idx], torch.tensor(classes))]
    return x_all[keep], y_all[keep]


def run(agem=False, freeze_old=False, steps=60, per_class=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    memory_x, memory_y, acc = [], [], np.zeros((5, 5))  # acc[after task, on task]
    for t, classes in enumerate(tasks):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        old = [c for done in tasks[:t] for c in done]
        if freeze_old and old:
            opt = lg.RowRules(opt, rows=model[2], frozen=old)
        x, y = task_data(train, classes)
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            if agem and memory_x:
                mx, my = torch.cat(memory_x), torch.cat(memory_y)
                lg.project_replay(loss, F.cross_entropy(model(mx), my), model)
            else:
                loss.backward()
            opt.step()
        for c in classes:  # fill the memory with a few images of the new classes
            memory_x.append(x[y == c][:per_class])
            memory_y.append(y[y == c][:per_class])
        with torch.no_grad():
            for s in range(t + 1):
                xt, yt = task_data(test, tasks[s])
                acc[t, s] = (model(xt).argmax(1) == yt).float().mean().item()
    average = acc[4].mean()
    forgetting = np.mean([acc[:4, s].max() - acc[4, s] for s in range(4)])
    return average, forgetting


for name, kw in {
    "fine-tuning": {},
    "RowRules(frozen old rows)": {"freeze_old": True},
    "A-GEM (project_replay)": {"agem": True},
    "A-GEM + frozen old rows": {"agem": True, "freeze_old": True},
}.items():
    average, forgetting = run(**kw)
    print(f"{name:26}: average accuracy {average:.3f}, forgetting {forgetting:.3f}")
