# Mixed precision, gradient accumulation and torch.compile with policies and row rules.
import copy

import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

torch.manual_seed(0)
C = 4
x, y = (
    torch.randn(16, 8),
    torch.randint(-1, 2, (16, C)),
)  # partial multi-hot, -1 = unknown
y[:, 3] = y[:, 3].clamp(max=0)  # class 3 has no positive label in this batch


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, C))
        # The policy is a submodule: its statistics move with .to() and live in
        # state_dict.
        self.policy = lg.chain(
            lg.mask_unknown(), lg.eqlv2(num_classes=C), lg.clip_per_sample(1.0)
        )

    def forward(self, x, y):
        z = self.policy(self.net(x), y)
        return F.binary_cross_entropy_with_logits(
            z, y.clamp(min=0).to(z.dtype), reduction="sum"
        )


# 1. AMP: attach the GradScaler so that clipping thresholds and EQLv2's statistics see
#    the unscaled gradient (the scale is read on the device: no host sync). Overflowing
#    steps are skipped by the scaler and leave the statistics untouched.
model = Classifier()
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
model.policy.attach_grad_scaler(scaler)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
with torch.autocast("cpu", dtype=torch.bfloat16):
    loss = model(x, y)
scaler.scale(loss).backward()
scaler.step(opt)
scaler.update()
print(
    f"AMP step done; EQLv2 batches counted: {int(model.policy.policies[1].num_updates)}"
)

# 2. Gradient accumulation: inside lg.accumulation_window the micro-batches use the
#    statistics of the window's start and commit their sum once, exactly like one batch
#    of 16. RowRules unions the classes present over the window (observe each
#    micro-batch, then step).
one, accum = Classifier(), Classifier()
accum.load_state_dict(one.state_dict())
one(x, y).backward()
with lg.accumulation_window(accum):
    for part in (slice(0, 8), slice(8, 16)):
        accum(x[part], y[part]).backward()
same_grad = all(
    torch.allclose(a.grad, b.grad, atol=1e-6)
    for a, b in zip(one.parameters(), accum.parameters())
)
same_state = all(torch.allclose(a, b) for a, b in zip(one.buffers(), accum.buffers()))
print(
    f"2 micro-batches == 1 batch: gradients {same_grad}, policy statistics {same_state}"
)

head_opt = lg.RowRules(torch.optim.SGD(accum.parameters(), lr=0.1), rows=accum.net[2],
                       skip_absent=True)  # fmt: skip
head_opt_present = (y == 1).any(dim=0).tolist()
for part in (slice(0, 8), slice(8, 16)):
    head_opt.observe(
        y[part], encoding="multi_hot"
    )  # present: the union over the window
before = accum.net[2].weight.detach().clone()
head_opt.step()
moved = (accum.net[2].weight != before).any(dim=1)
print(
    f"classes present in the window: {head_opt_present}\n"
    f"head rows that moved: {moved.tolist()}"
)

# 3. torch.compile: the policy is an autograd.Function without host syncs, so the model
#    compiles with fullgraph=True and the compiled gradients equal the eager ones.
eager = Classifier()
compiled_module = copy.deepcopy(eager)
compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
eager(x, y).backward()
compiled(x, y).backward()
match = all(
    torch.allclose(a.grad, b.grad, atol=1e-6)
    for a, b in zip(eager.parameters(), compiled_module.parameters())
)
print(f"torch.compile(fullgraph=True) gradients match eager: {match}")
