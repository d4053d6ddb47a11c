# "Customize gradient updates based on labels": the common recipe edits param.grad after
# backward(). Four ways it goes wrong, and what to do instead.
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
head = model[2]
x = torch.randn(8, 20)
labels = torch.randint(0, 2, (8, 5))
labels[torch.rand(8, 5) < 0.4] = -1  # -1: unknown

# 1. Shapes: the head's weight gradient is (5, 10), one row per class; a 5-vector of
#    labels broadcasts along the input axis and raises, and a (batch, 5) label tensor
#    cannot say "label 3 of sample 7 is unknown" on a (5, 10) gradient at all.
F.binary_cross_entropy_with_logits(model(x), labels.clamp(min=0).float()).backward()
try:
    head.weight.grad *= labels[0].float()
except RuntimeError as err:
    print("1. param.grad *= labels:", str(err).split(" at ")[0])
model.zero_grad()

# 2. Reach: even a correctly shaped edit of the head's .grad leaves the trunk learning
#    from the unknown labels. A policy at the logits changes dL/dlogits per sample and
#    class, so every parameter gets the gradient of the loss over the known labels.
logits = lg.mask_unknown()(model(x), labels)
loss = F.binary_cross_entropy_with_logits(
    logits, labels.clamp(min=0).float(), reduction="sum"
)
ours = torch.autograd.grad(loss, list(model.parameters()))
known = (labels >= 0).float()
ref = F.binary_cross_entropy_with_logits(
    model(x), labels.clamp(min=0).float(), weight=known, reduction="sum"
)
refs = torch.autograd.grad(ref, list(model.parameters()))
print(
    "2. mask_unknown vs the loss over known labels, max |diff|:",
    [f"{float((a - b).abs().max()):.0e}" for a, b in zip(ours, refs)],
)

# 3. Adam cancels a constant scale: multiplying row c of the gradient by w[c] does not
#    change row c's step, because Adam divides each coordinate by its own gradient
#    magnitude.
w = torch.tensor([1.0, 1.0, 1.0, 5.0, 0.1])
steps = []
for scale_rows in (False, True):
    torch.manual_seed(0)
    m = nn.Linear(20, 5)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    before = m.weight.detach().clone()
    F.cross_entropy(m(x), labels.clamp(min=0).argmax(1)).backward()
    if scale_rows:
        m.weight.grad *= w[:, None]
    opt.step()
    steps.append((m.weight.detach() - before).norm(dim=1))
print(
    "3. Adam step norm per row, plain     :", [round(v, 4) for v in steps[0].tolist()]
)
print(
    "   Adam step norm per row, grad *= w :", [round(v, 4) for v in steps[1].tolist()]
)

# 4. Optimizers undo masks: a row whose gradient is zeroed still moves under momentum,
#    Adam's moments and decoupled weight decay. Here class 4 is "frozen" by zeroing its
#    .grad after the first step; it keeps drifting.
torch.manual_seed(0)
m = nn.Linear(20, 5)
opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05)
y = torch.randint(0, 5, (8,))
for step in range(6):
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    if step > 0:
        m.weight.grad[4] = 0  # "freeze" class 4 from step 1 on
    opt.step()
    if step == 0:
        frozen_at = m.weight[4].detach().clone()
drift = float((m.weight[4].detach() - frozen_at).abs().max())
print(f"4. AdamW, row 4 with zeroed gradient for 5 steps moved by up to {drift:.4f}")
