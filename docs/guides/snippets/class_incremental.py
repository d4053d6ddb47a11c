# Class-incremental learning: learn digits 0-4, then digits 5-9 from new data only. The
# rows of the old classes in the head should stay exactly where phase 1 left them.
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import labelgrad as lg

digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16
y_all = torch.tensor(digits.target)
perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
train, test = perm[:1300], perm[1300:]
old, new = list(range(5)), list(range(5, 10))
is_old = y_all < 5


def accuracy(model, classes, among=None):
    """Test accuracy on ``classes``, predicting among ``among`` (default: all 10)."""
    idx = test[torch.isin(y_all[test], torch.tensor(classes))]
    with torch.no_grad():
        logits = model(x_all[idx])
    if among is not None:
        masked = torch.full_like(logits, float("-inf"))
        masked[:, among] = logits[:, among]
        logits = masked
    return float((logits.argmax(1) == y_all[idx]).float().mean())


def phase(model, opt, idx, steps=80, grad_hook=None):
    for _ in range(steps):
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        if grad_hook is not None:
            grad_hook()
        if isinstance(opt, lg.RowRules):
            opt.step(targets=y_all[idx])
        else:
            opt.step()


torch.manual_seed(0)
base = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
phase(base, torch.optim.AdamW(base.parameters(), lr=3e-3), train[is_old[train]])
print(f"after phase 1: accuracy on 0-4 = {accuracy(base, old):.3f}")
phase1 = {k: v.clone() for k, v in base.state_dict().items()}


def phase2(kind):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model.load_state_dict(phase1)
    head = model[2]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    hook = None
    if kind == "zero .grad of old rows":

        def hook():
            head.weight.grad[old] = 0
            head.bias.grad[old] = 0

    if kind == "lg.RowRules(frozen=old)":
        opt = lg.RowRules(opt, rows=head, frozen=old)
    before = head.weight[old].detach().clone()
    # Phase 2 data: the new classes, plus a small replay buffer of 10 images per old
    # class.
    new_idx = train[~is_old[train]]
    replay = torch.cat([train[y_all[train] == c][:10] for c in old])
    phase(model, opt, torch.cat([new_idx, replay]), grad_hook=hook)
    drift = float((head.weight[old] - before).detach().abs().max())
    unchanged = torch.equal(head.weight[old], before)
    print(f"{kind}: old rows moved by {drift:.4f}, bitwise unchanged: {unchanged}")
    print(
        f"    accuracy on 0-4 among 0-4 {accuracy(model, old, among=old):.3f}, "
        f"on 0-4 {accuracy(model, old):.3f}, on 5-9 {accuracy(model, new):.3f}"
    )


for kind in ("plain fine-tuning", "zero .grad of old rows", "lg.RowRules(frozen=old)"):
    phase2(kind)
