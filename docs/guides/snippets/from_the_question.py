# "How can PyTorch customize gradient updates based on labels?" The recipes as they are
# usually written, what goes wrong when they run, and the labelgrad version of each.
import torch
import torch.nn.functional as F
from torch import nn

import labelgrad as lg

C = 5  # classes (or labels)


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, C))


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


torch.manual_seed(0)
x = torch.randn(32, 20)
y = torch.randint(0, C, (32,))  # class indices
y_multi = torch.randint(0, 2, (32, C))  # multi-hot
y_partial = y_multi.clone()
y_partial[torch.rand(32, C) < 0.4] = -1  # -1: this label of this sample is unknown
model = make_model()
params = list(model.parameters())
head = model[2]

# 1. Mask by label. As written: multiply the gradient by the labels after backward().
print("1. mask by label")
F.binary_cross_entropy_with_logits(model(x), y_multi.float()).backward()
try:
    head.weight.grad *= y_multi.float()  # (5, 16) gradient, (32, 5) labels
except RuntimeError as err:
    print("   param.grad *= labels ->", str(err).split(" at ")[0])
model.zero_grad()
# labelgrad: a policy gates dL/dlogits per sample and class, so every parameter (the
# trunk too) gets the gradient of the loss without the masked classes.
keep = torch.tensor([True, True, False, True, True])  # drop class 2
loss = F.binary_cross_entropy_with_logits(
    lg.mask(keep)(model(x), y_multi), y_multi.float(), reduction="sum"
)
ours = torch.autograd.grad(loss, params)
ref_loss = F.binary_cross_entropy_with_logits(
    model(x), y_multi.float(), weight=keep.float().expand(32, C), reduction="sum"
)
diff = max_diff(ours, torch.autograd.grad(ref_loss, params))
print(f"   lg.mask(keep) vs the loss without class 2: {diff:.0e}")

# 2. Scale by label. As written: multiply row c of the head's gradient by w[c]. Adam
#    divides each coordinate by its own running magnitude: the scale cancels.
print("2. scale by label")
w = torch.tensor([1.0, 1.0, 1.0, 4.0, 0.25])


def adam_step_per_row(scale_grad: bool, lr_scale: torch.Tensor | None) -> list[float]:
    m = make_model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    if lr_scale is not None:
        opt = lg.RowRules(opt, rows=m[2], lr_scale=lr_scale)
    before = m[2].weight.detach().clone()
    F.cross_entropy(m(x), y).backward()
    if scale_grad:
        m[2].weight.grad *= w[:, None]
    opt.step()
    return [round(v, 3) for v in (m[2].weight - before).norm(dim=1).tolist()]


print("   Adam, grad *= w     : step norm per row", adam_step_per_row(True, None))
print("   RowRules(lr_scale=w): step norm per row", adam_step_per_row(False, w))
# To weigh classes in what the model learns (the trunk too), weigh the loss's gradient
# at the logits: lg.class_weights(w) gives exactly the gradient of the weighted loss.
loss = F.cross_entropy(lg.class_weights(w)(model(x), y), y, reduction="sum")
ref_loss = F.cross_entropy(model(x), y, weight=w, reduction="sum")
ours = torch.autograd.grad(loss, params)
diff = max_diff(ours, torch.autograd.grad(ref_loss, params))
print(f"   lg.class_weights(w) vs the weighted loss: {diff:.0e}")

# 3. Freeze a class. As written: zero its gradient rows. AdamW's moments and decoupled
#    weight decay keep moving the "frozen" row; RowRules(frozen=) stops the update
#    itself.
print("3. freeze a class")
for frozen in (False, True):
    m = make_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.05)
    if frozen:
        opt = lg.RowRules(opt, rows=m[2], frozen=[4])
    for step in range(6):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        if step == 1:
            row_4 = m[2].weight[4].detach().clone()  # "frozen" from here on
        if step >= 1 and not frozen:
            m[2].weight.grad[4] = 0
        opt.step()
    moved = float((m[2].weight[4].detach() - row_4).abs().max())
    name = "RowRules(frozen=[4])" if frozen else "grad[4] = 0 (AdamW)"
    print(f"   {name:21}: row 4 moved by {moved:.4g} over 5 steps")

# 4. Separate optimizers by label. As written: one optimizer per label group over the
#    same model, and each batch steps the optimizers of its labels.
print("4. separate optimizers by label")
frequent, rare = [0, 1, 2], [3, 4]
m = make_model()
opts = {
    "frequent": torch.optim.SGD(m.parameters(), lr=0.1),
    "rare": torch.optim.Adam(m.parameters(), lr=1e-3),
}
batch_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # no rare class in this batch
rare_rows = m[2].weight[rare].detach().clone()
F.cross_entropy(m(x[:8]), batch_labels).backward()
opts["frequent"].step()  # the only group present
moved = not torch.equal(m[2].weight[rare], rare_rows)
print("   the rare rows moved on a batch without a rare class:", moved)
try:
    lg.route({"frequent": (opts["frequent"], frequent), "rare": (opts["rare"], rare)})
except ValueError as err:
    print("   lg.route refuses it:", str(err).split(" is owned")[0], "is shared")
# labelgrad: one optimizer for the shared trunk, stepped on every batch (always=), and
# one per head (a head per group), stepped only when the group's classes occur.
trunk = nn.Sequential(nn.Linear(20, 16), nn.ReLU())
heads = nn.ModuleDict({"frequent": nn.Linear(16, 3), "rare": nn.Linear(16, 2)})
router = lg.route(
    {
        "frequent": (torch.optim.SGD(heads["frequent"].parameters(), lr=0.1), frequent),
        "rare": (torch.optim.Adam(heads["rare"].parameters(), lr=1e-3), rare),
    },
    always=[torch.optim.SGD(trunk.parameters(), lr=0.1, momentum=0.9)],
)
rare_before = heads["rare"].weight.detach().clone()
trunk_before = trunk[0].weight.detach().clone()
features = trunk(x[:8])
logits = torch.cat([heads["frequent"](features), heads["rare"](features)], dim=1)
F.cross_entropy(logits, batch_labels).backward()
router.step(targets=batch_labels)  # the trunk, and the heads of the classes present
trunk_moved = not torch.equal(trunk[0].weight, trunk_before)
rare_moved = not torch.equal(heads["rare"].weight, rare_before)
print(f"   lg.route(always=): trunk moved {trunk_moved}, rare head moved {rare_moved}")

# 5. Per-label regularisation. As written: a param group per class. A row of a weight
#    is not a leaf tensor, so torch refuses; RowRules(weight_decay=) gives row c its own
#    decoupled decay.
print("5. per-label regularisation")
try:
    torch.optim.AdamW(
        [{"params": [head.weight[c]], "weight_decay": d} for c, d in enumerate(w)]
    )
except ValueError as err:
    print("   one param group per row ->", err)
m = make_model()
decay = torch.tensor([0.0, 0.0, 0.0, 1.0, 10.0])
opt = lg.RowRules(
    torch.optim.AdamW(m.parameters(), lr=1e-2), rows=m[2], weight_decay=decay
)
before = m[2].weight.detach().clone()
for p in m.parameters():  # zero gradients: the step is the decay, w (1 - lr decay)
    p.grad = torch.zeros_like(p)
opt.step()
shrink = (m[2].weight.norm(dim=1) / before.norm(dim=1)).tolist()
print("   RowRules(weight_decay=decay): row norm ratio", [round(s, 3) for s in shrink])

# 6. Multi-label with missing labels. As written: unknown (-1) labels become 0, so the
#    model is trained to say "no" wherever nobody looked.
print("6. multi-label with missing labels")
unknown = y_partial < 0
for name, policy in (("-1 as 0", None), ("lg.mask_unknown()", lg.mask_unknown())):
    logits = model(x)
    gated = logits if policy is None else policy(logits, y_partial)
    loss = F.binary_cross_entropy_with_logits(
        gated, y_partial.clamp(min=0).float(), reduction="sum"
    )
    (dz,) = torch.autograd.grad(loss, logits)
    largest = dz[unknown].abs().max()
    print(f"   {name:17}: largest gradient at unknown labels {largest:.2f}")

# 7. Gradient surgery. As written: one backward per label, flatten, project (PCGrad) or
#    solve, write .grad: K backward passes and a K x P Jacobian. labelgrad computes the
#    K x K Gramian of the per-label gradients on the shared trunk (with an engine that
#    fits K and the model: here exact), weighs it with any aggregator and runs one
#    backward; the head keeps the plain gradient of its own labels.
print("7. gradient surgery")
model.zero_grad()
losses = lg.per_label_losses(model(x), y_multi, loss="bce")  # (C,), sums to the mean
trunk_params = list(model[0].parameters())
rows = []  # the hand-written loop, as a reference: one backward per label
for loss_k in losses:
    grads = torch.autograd.grad(loss_k, trunk_params, retain_graph=True)
    rows.append(torch.cat([g.flatten() for g in grads]))
J = torch.stack(rows)
cos = lg.conflicts(J @ J.T)
pairs = int((cos < 0).sum()) // 2
print(f"   label pairs that conflict on the trunk (cos < 0): {pairs} of 10")
result = lg.aggregate_backward(
    losses, shared=model[0], aggregator=lg.aggregators.UPGrad()
)
gap = float((result.gramian - J @ J.T).abs().max())
print(f"   engine {result.engine!r}, Gramian vs the hand loop: {gap:.0e}")
update = torch.cat([p.grad.flatten() for p in trunk_params])
print("   UPGrad's step lowers every label's loss:", bool((J @ update >= -1e-6).all()))
