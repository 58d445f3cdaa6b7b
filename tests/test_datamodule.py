"""InverseProblemDataModule and measurement files: reproducible noise, correct statistics, safe files."""
from __future__ import annotations

import math
import os
import sys

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from datamodules import InverseProblemDataModule, build_operator, load_measurements
from datamodules.inverse_problem import EpochSampler
from datamodules.sources import Ellipses
from diffpost.operators import DenseOperator, LinearOperator

SIZE = 8
X_SHAPE = (1, SIZE, SIZE)


def _matrix(m: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, SIZE * SIZE, generator=g, dtype=torch.float64) / SIZE


def _dm(**kw) -> InverseProblemDataModule:
    args = dict(images=Ellipses(size=SIZE, length=120, seed=1), operator=DenseOperator(_matrix(), X_SHAPE),
                sigma_y=0.1, batch_size=4, n_val=24, n_test=16)
    args.update(kw)
    return InverseProblemDataModule(**args)


def _oracle_Ax(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.double().flatten(1) @ matrix.T


def _collect(loader) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for b in loader:
        assert set(b) == {"x", "y", "index"} and b["index"].dtype == torch.long
        for i, x, y in zip(b["index"].tolist(), b["x"], b["y"]):
            assert i not in out
            out[i] = (x, y)
    return out


# ------------------------------------------------------------------------------ splits & shapes
def test_splits_are_disjoint_ranges_and_batches_have_shapes():
    dm = _dm(n_train=50)
    dm.setup("fit")
    idx = {s: set(dm.split_indices[s]) for s in ("train", "val", "test")}
    assert idx["val"] == set(range(24)) and idx["test"] == set(range(24, 40)) and idx["train"] == set(range(40, 90))
    b = next(iter(dm.val_dataloader()))
    assert b["x"].shape == (4, *X_SHAPE) and b["y"].shape == (4, 40) and b["index"].shape == (4,)
    assert b["x"].dtype == b["y"].dtype == torch.float32
    assert dm.x_shape == X_SHAPE and dm.y_shape == (40,) and dm.noise.sigma_y == 0.1
    assert len(_dm().dataset("train")) == 120 - 40  # default: the rest
    with pytest.raises(ValueError, match="exceeds"):
        _dm(n_train=100)
    with pytest.raises(ValueError, match="x_shape"):
        _dm(images=Ellipses(size=SIZE * 2, length=120)).setup("fit")
    with pytest.raises(TypeError, match="LinearOperator"):
        _dm(operator=nn.Linear(3, 3))
    with pytest.raises(ValueError, match="sigma_y"):
        _dm(sigma_y=-1.0)


# --------------------------------------------------------------------- val/test reproducibility
def test_val_and_test_measurements_identical_for_any_batch_size_and_workers():
    ref_val = ref_test = None
    for workers in (0, 2):
        for bs in (1, 4):
            dm = _dm(batch_size=bs, num_workers=workers)
            dm.setup("fit")
            val, test = _collect(dm.val_dataloader()), _collect(dm.test_dataloader())
            assert sorted(val) == list(range(24)) and sorted(test) == list(range(24, 40))
            if ref_val is None:
                ref_val, ref_test = val, test
                continue
            for ref, got in ((ref_val, val), (ref_test, test)):
                for i in ref:
                    assert torch.equal(ref[i][0], got[i][0]) and torch.equal(ref[i][1], got[i][1]), (workers, bs, i)
    # the seed matters (so the equality above is not vacuous)
    other = _collect(_dm(seed=1).val_dataloader())
    assert not torch.equal(other[0][1], ref_val[0][1])
    assert torch.equal(other[0][0], ref_val[0][0])  # same image, different noise


def test_distributed_shards_see_the_same_measurements():
    """Under DDP Lightning shards with DistributedSampler: every rank's items equal the single-process ones."""
    dm = _dm()
    single = _collect(dm.val_dataloader())
    ds = dm.dataset("val")
    seen = {}
    for rank in range(3):  # 24 items over 3 ranks
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=sampler)
        seen.update(_collect(loader))
    assert sorted(seen) == sorted(single)
    assert all(torch.equal(seen[i][1], single[i][1]) for i in single)


def test_noise_statistics_match_sigma_y():
    """std(y − A x) ≈ σ_y with A x from the dense matrix in float64 (independent of the operator code)."""
    matrix = _matrix(m=128)
    dm = _dm(operator=DenseOperator(matrix, X_SHAPE), sigma_y=0.07, n_val=40, n_test=40, batch_size=8)
    res = []
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        for b in loader:
            res.append(b["y"].double() - _oracle_Ax(matrix, b["x"]))
    r = torch.cat(res).flatten()  # 80 · 128 = 10240 draws: std error of std ≈ 0.7 %
    assert abs(r.std().item() / 0.07 - 1) < 0.03
    assert abs(r.mean().item()) < 4 * 0.07 / math.sqrt(r.numel())
    # noise-free synthesis is A x up to float32 rounding
    b = next(iter(_dm(operator=DenseOperator(matrix, X_SHAPE), sigma_y=0.0).val_dataloader()))
    assert torch.allclose(b["y"].double(), _oracle_Ax(matrix, b["x"]), atol=1e-6)


def test_val_subset_and_hparams_are_plain():
    dm = _dm()
    sub = dm.val_subset(5)
    first = next(iter(_dm(batch_size=5).val_dataloader()))
    assert len(sub) == 5
    for k, item in enumerate(sub):
        assert int(item["index"]) == k
        assert torch.equal(item["x"], first["x"][k]) and torch.equal(item["y"], first["y"][k])
    with pytest.raises(ValueError, match="n_val"):
        dm.val_subset(25)
    hp = dict(dm.hparams)
    assert "operator" not in hp and "images" not in hp
    assert hp["operator_spec"]["fingerprint"] == dm.operator.fingerprint()
    assert hp["operator_spec"]["class_path"] == "diffpost.operators.base.DenseOperator"
    assert hp["sigma_y"] == 0.1 and hp["n_val"] == 24
    # hparams survive a weights-only round trip: no modules, no datasets in them
    buf = __import__("io").BytesIO()
    torch.save(hp, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True) == hp


@pytest.mark.usefixtures("no_global_rng")
def test_synthesis_never_touches_the_global_rng(tmp_path):
    """Items, val_subset, export and the training shuffle use their own generators only (the
    DataLoader iterator itself draws a worker base seed from the global RNG; that is torch's, not ours)."""
    dm = _dm(n_train=10)
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        for k in range(len(ds)):
            ds[k]
    dm.val_subset(3)
    dm.export_measurements(str(tmp_path / "m.pt"), n=2)
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(3)
    assert sorted(sampler) == list(range(10))


@pytest.mark.gpu
def test_operator_on_gpu_is_copied_to_cpu_for_synthesis():
    matrix = _matrix()
    ref = _collect(_dm(operator=DenseOperator(matrix, X_SHAPE)).val_dataloader())
    op = DenseOperator(matrix, X_SHAPE).cuda()
    for workers in (0, 2):
        got = _collect(_dm(operator=op, num_workers=workers).val_dataloader())
        assert all(torch.equal(ref[i][1], got[i][1]) for i in ref)
    assert op.matrix.is_cuda  # the user's operator stays where it was


# ----------------------------------------------------------------------------- training noise
class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["index"].clone(), batch["x"].clone(), batch["y"].clone()))
        return self.w**2 + 0.0 * batch["x"].sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_noise(num_workers: int, tmp_path, epochs: int = 3) -> dict[tuple[int, int], torch.Tensor]:
    """Train for a few epochs and return the training noise y − A x per (epoch, index)."""
    matrix = _matrix()
    dm = _dm(operator=DenseOperator(matrix, X_SHAPE), n_train=12, num_workers=num_workers, train_measurements=True)
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=dm)
    ckpt = tmp_path / f"w{num_workers}.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)  # datamodule hparams are plain types
    assert saved["datamodule_hyper_parameters"]["operator_spec"]["fingerprint"] == dm.operator.fingerprint()
    noise, orders = {}, {}
    for epoch, index, x, y in model.seen:
        for i, xi, yi in zip(index.tolist(), x, y):
            assert (epoch, i) not in noise
            noise[(epoch, i)] = yi.double() - _oracle_Ax(matrix, xi[None])[0]
        orders.setdefault(epoch, []).extend(index.tolist())
    for epoch in range(epochs):  # each epoch covers the train split once, in a new order
        assert sorted(orders[epoch]) == list(range(40, 52))
    assert orders[0] != orders[1]
    return noise


def test_training_noise_is_fresh_each_epoch_and_reproducible(tmp_path):
    a = _fit_noise(0, tmp_path)
    for i in range(40, 52):
        for e1, e2 in ((0, 1), (1, 2), (0, 2)):
            assert not torch.allclose(a[(e1, i)], a[(e2, i)]), (i, e1, e2)
    r = torch.stack(list(a.values())).flatten()
    assert abs(r.std().item() / 0.1 - 1) < 0.08  # 36 · 40 draws
    # workers (forked per epoch) see the epoch too, and produce the same noise
    b = _fit_noise(2, tmp_path)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_epoch_reaches_the_dataset_through_a_rank_share():
    """Under DDP each rank's loader iterates its share of the (seed, epoch) order and Lightning calls
    set_epoch on it: the loader must hand that epoch to the dataset (as on one process)."""
    dm = _dm(n_train=8, batch_size=8, train_measurements=True)
    loader = dm.train_dataloader()
    ds = loader.dataset
    dist_loader = type(loader)(ds, EpochSampler(ds, dm.seed, num_replicas=2, rank=1), batch_size=8)

    def noisy(ldr, epoch):
        ldr.sampler.set_epoch(epoch)
        return _collect(ldr)

    n0, n1 = noisy(dist_loader, 0), noisy(dist_loader, 1)
    s0, s1 = noisy(loader, 0), noisy(loader, 1)
    assert len(n0) == 4
    for i in n0:
        if i in n1:
            assert not torch.equal(n0[i][1], n1[i][1])
            assert torch.equal(n1[i][1], s1[i][1])  # same (index, epoch) → same y on any sampler
        assert torch.equal(n0[i][1], s0[i][1])
    # manual iteration: set_epoch on the datamodule selects the epoch
    dm.set_epoch(1)
    manual = _collect(torch.utils.data.DataLoader(dm.dataset("train"), batch_size=3))
    assert all(torch.equal(manual[i][1], s1[i][1]) for i in s1)


# ------------------------------------------------------ training items: no unused synthesis; resume
def test_training_items_skip_measurement_synthesis_and_val_test_stay_bit_identical(tmp_path):
    """Training steps draw their own noise, so the train split synthesises no y (no operator call);
    val/test y are unchanged: the seeded formula y = A x + σ_y n, n ~ N(0, I) from
    seed_for(seed, split_id, index), in float64 then rounded, for either setting. Bugs caught: training
    items still synthesising y (wasted operator calls), or the change shifting val/test noise streams."""
    from diffpost.random import make_generator, seed_for

    matrix = _matrix()
    digests = []
    for train_measurements in (False, True):
        dm = _dm(operator=DenseOperator(matrix, X_SHAPE), n_train=12, seed=3, train_measurements=train_measurements)
        before = dict(dm.operator.counts)
        batch = next(iter(dm.train_dataloader()))
        assert set(batch) == ({"x", "y", "index"} if train_measurements else {"x", "index"})
        assert (dict(dm.operator.counts) != before) == train_measurements  # A x only when y is wanted
        h = __import__("hashlib").sha256()
        for split, split_id in (("val", 1), ("test", 2)):
            ds = dm.dataset(split)
            for k in range(len(ds)):
                item, index = ds[k], dm.split_indices[split][k]
                clean = _oracle_Ax(matrix, item["x"][None])[0]
                noise = torch.randn(clean.shape, generator=make_generator(seed_for(3, split_id, index)), dtype=torch.float64)
                assert torch.equal(item["y"], (clean + 0.1 * noise).float()), (split, index)
                h.update(item["y"].numpy().tobytes())
        digests.append(h.hexdigest()[:16])
    # and what the code before this change (commit 2770809) produced for this data and seed
    assert digests == ["61a7759df6cc5c88"] * 2
    # an export of the train split still has its measurements (those of epoch 0)
    path = tmp_path / "train.pt"
    _dm(operator=DenseOperator(matrix, X_SHAPE), n_train=12, seed=3).export_measurements(str(path), split="train", n=2)
    assert torch.equal(load_measurements(str(path))["y"], torch.stack([dm.dataset("train")[k]["y"] for k in range(2)]))


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch_sharded_over_ranks():
    ds = _dm(n_train=10).dataset("train")
    orders = {}
    for epoch in (0, 1):
        shares = [EpochSampler(ds, seed=5, num_replicas=3, rank=r) for r in range(3)]
        for sh in shares:
            sh.set_epoch(epoch)
        got = [list(sh) for sh in shares]
        assert all(len(g) == 4 for g in got)  # 10 items padded to 12, 4 per rank
        assert set(sum(got, [])) == set(range(10))
        single = EpochSampler(ds, seed=5)
        single.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == list(range(10))
        assert [order[(i * 3 + r) % 10] for r in range(3) for i in range(4)] == sum(got, [])  # rank r: r, r+3, ...
        orders[epoch] = order
    assert orders[0] != orders[1]
    again = EpochSampler(ds, seed=5)
    again.set_epoch(1)
    again.start = 4
    assert list(again) == orders[1][4:] and len(again) == 10  # a resumed epoch; the length stays the epoch's


def test_train_loader_state_resumes_the_epoch_at_the_next_batch():
    """state_dict after k batches; a new loader given that state yields exactly the remaining batches of
    the same epoch, whenever iter() was called (Lightning may call it before set_epoch); a finished or
    older epoch resumes at the start of the current one. Bugs caught: the position not applied, applied
    twice, counted from prefetching, or an epoch-end state skipping batches of the next epoch."""
    def loader(state=None):
        dm = _dm(n_train=10, batch_size=3)
        if state is not None:
            dm.load_state_dict({"train_loader": state})
        return dm, dm.train_dataloader()

    dm, full = loader()
    full.sampler.set_epoch(2)
    batches = [b["index"].tolist() for b in full]
    assert len(batches) == 4 and sorted(sum(batches, [])) == list(range(40, 50))
    it = iter(full)
    full.sampler.set_epoch(2)
    next(it), next(it)
    state = dm.state_dict()["train_loader"]
    assert state == {"epoch": 2, "batches": 2}
    _, resumed = loader(state)
    it = iter(resumed)  # before set_epoch, as in Lightning's resume path
    resumed.sampler.set_epoch(2)
    assert [b["index"].tolist() for b in it] == batches[2:]
    assert resumed.state_dict() == {"epoch": 2, "batches": 4}
    resumed.sampler.set_epoch(3)  # the next epoch starts from its beginning
    assert len([b for b in resumed]) == 4
    _, after_end = loader({"epoch": 2, "batches": 4})  # saved at the end of epoch 2
    after_end.sampler.set_epoch(3)
    assert len(list(after_end)) == 4


# -------------------------------------------------------------------------- measurement files
def test_export_load_round_trip(tmp_path):
    dm = _dm()
    path = tmp_path / "sub" / "meas.pt"
    dm.export_measurements(str(path), split="test", n=10)
    assert os.listdir(path.parent) == ["meas.pt"]  # atomic: no temporary left behind
    raw = torch.load(path, weights_only=True)
    data = load_measurements(str(path))
    assert set(data) >= {"x", "y", "index", "sigma_y", "operator", "format"}
    assert data["format"] == "diffpost.measurements/v1" and data["sigma_y"] == 0.1
    ref = _collect(dm.test_dataloader())
    assert data["index"].tolist() == list(range(24, 34))
    for k, i in enumerate(data["index"].tolist()):
        assert torch.equal(data["x"][k], ref[i][0]) and torch.equal(data["y"][k], ref[i][1])
        assert torch.equal(raw["y"][k], ref[i][1])
    assert data["operator"]["fingerprint"] == dm.operator.fingerprint()
    # overwrite in place: still a single valid file
    dm.export_measurements(str(path), split="val")
    assert load_measurements(str(path))["x"].shape[0] == 24 and os.listdir(path.parent) == ["meas.pt"]


class _Custom:  # a pickled object that weights_only loading must refuse
    def __reduce__(self):
        return (os.getcwd, ())


def test_load_measurements_rejects_bad_files(tmp_path):
    dm = _dm()
    good = tmp_path / "good.pt"
    dm.export_measurements(str(good), n=4)
    with pytest.raises(FileNotFoundError, match="no measurement file"):
        load_measurements(str(tmp_path / "absent.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt"):
        load_measurements(str(corrupt))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        load_measurements(str(junk))
    pickled = tmp_path / "pickled.pt"
    record = torch.load(good, weights_only=True)
    torch.save({**record, "extra": _Custom()}, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        load_measurements(str(pickled))

    def save_variant(name, **changes):
        p = tmp_path / name
        torch.save({**record, **changes}, p)
        return str(p)

    with pytest.raises(ValueError, match="format"):
        load_measurements(save_variant("fmt.pt", format="something/v0"))
    nan_y = record["y"].clone()
    nan_y[1, 3] = float("nan")
    with pytest.raises(ValueError, match="'y'.*non-finite"):
        load_measurements(save_variant("nan.pt", y=nan_y))
    inf_x = record["x"].clone()
    inf_x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="'x'.*non-finite"):
        load_measurements(save_variant("inf.pt", x=inf_x))
    with pytest.raises(ValueError, match="number of items"):
        load_measurements(save_variant("len.pt", y=record["y"][:2]))
    no_op = {k: v for k, v in record.items() if k != "operator"}
    torch.save(no_op, tmp_path / "noop.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_measurements(str(tmp_path / "noop.pt"))


# ---------------------------------------------------------------------------- build_operator
def test_build_operator_refuses_foreign_classes(tmp_path, monkeypatch):
    # a module on sys.path that would run code on import: it must never be imported
    (tmp_path / "evil_ops_mod.py").write_text("import os\nos.environ['EVIL_RAN'] = '1'\nclass Op: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in ("evil_ops_mod.Op", "os.system", "collections.OrderedDict", "diffpost.random.make_generator",
                 "diffpost.operatorsX.Blur", "tests.test_datamodule._Local", "Blur", ""):
        with pytest.raises(ValueError, match="refusing"):
            build_operator({"class_path": path, "init_args": {}})
    assert "evil_ops_mod" not in sys.modules and "EVIL_RAN" not in os.environ
    for path in ("diffpost.operators.GaussianNoise", "diffpost.operators.base.conjugate_gradient",
                 "diffpost.operators.LinearOperator", "diffpost.operators.nope.Op"):
        with pytest.raises(ValueError):
            build_operator({"class_path": path, "init_args": {}})
    # DenseOperator's matrix is not in its config: a clear error, not a crash
    with pytest.raises(ValueError, match="cannot rebuild"):
        build_operator({"class_path": "diffpost.operators.base.DenseOperator", "init_args": {"x_shape": [1, 2, 2]}})
    with pytest.raises(TypeError):
        build_operator("diffpost.operators.Blur")


class _Local(LinearOperator):
    pass


# ------------------------------------------------------------------- real operators
def test_blur_round_trip_through_a_measurement_file(tmp_path):
    from diffpost.operators import Blur  # no skip: a missing operator fails the test

    op = Blur(shape=(1, 16, 16), kernel_size=5, blur_sigma=1.5)
    dm = InverseProblemDataModule(Ellipses(size=16, length=64, seed=2), op, sigma_y=0.05, batch_size=8, n_val=16, n_test=16)
    A = op.to_dense()
    res = [b["y"].double().flatten(1) - b["x"].double().flatten(1) @ A.T for b in dm.val_dataloader()]
    r = torch.cat(res).flatten()  # 16 · 256 draws
    assert abs(r.std().item() / 0.05 - 1) < 0.05
    path = tmp_path / "blur.pt"
    dm.export_measurements(str(path))
    data = load_measurements(str(path))
    rebuilt = build_operator(data["operator"])
    assert type(rebuilt) is type(op) and rebuilt.fingerprint() == op.fingerprint()
    assert torch.allclose(rebuilt.to_dense(), A)
    # a tampered spec (different blur) is caught by the fingerprint
    bad = {**data["operator"], "init_args": {**data["operator"]["init_args"], "blur_sigma": 2.5}}
    with pytest.raises(ValueError, match="fingerprint"):
        build_operator(bad)


def test_ct_measurements(tmp_path):
    from diffpost.operators import CT  # no skip: a missing operator fails the test

    op = CT(shape=(1, 16, 16), n_angles=12)
    dm = InverseProblemDataModule(Ellipses(size=16, length=40, seed=0), op, sigma_y=0.02, batch_size=4, n_val=8, n_test=8,
                                  num_workers=0)
    b = next(iter(dm.val_dataloader()))
    assert b["y"].shape == (4, *op.y_shape)
    clean = op.forward(b["x"].double())
    assert abs((b["y"].double() - clean).std().item() / 0.02 - 1) < 0.15  # 4 · |y| draws
    path = tmp_path / "ct.pt"
    dm.export_measurements(str(path), n=8)
    rebuilt = build_operator(load_measurements(str(path))["operator"])
    assert rebuilt.fingerprint() == op.fingerprint()


# ------------------------------------------------------------------------------- real DDP (CPU)
class _DDPRecorder(_Recorder):
    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self.val_seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validation_step(self, batch, batch_idx):
        self.val_seen.append((batch["index"].clone(), batch["y"].clone()))

    def on_train_end(self):
        torch.save({"train": self.seen, "val": self.val_seen}, os.path.join(self.out_dir, f"rank{self.global_rank}.pt"))


@pytest.mark.slow
def test_ddp_spawn_shards_keep_measurements_and_epochs(tmp_path):
    """Two gloo processes: each rank takes its share of our (seed, epoch) order (Lightning keeps our
    DistributedSampler); validation measurements equal the single-process ones, and training noise
    per (epoch, index) equals the single-process noise."""
    matrix = _matrix()
    dm_args = dict(operator=DenseOperator(matrix, X_SHAPE), n_train=12, n_val=6, n_test=4, train_measurements=True)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
    )
    trainer.fit(_DDPRecorder(str(tmp_path)), datamodule=_dm(**dm_args))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _dm(**dm_args)
    val_ref = _collect(single.val_dataloader())
    for rec in ranks:
        for index, y in rec["val"]:
            for i, yi in zip(index.tolist(), y):
                assert torch.equal(yi, val_ref[i][1])
    train_ds = single.dataset("train")
    start = single.split_indices["train"][0]
    seen = set()
    for rec in ranks:
        for epoch, index, x, y in rec["train"]:
            train_ds.set_epoch(epoch)
            for i, yi in zip(index.tolist(), y):
                assert torch.equal(yi, train_ds[i - start]["y"]), (epoch, i)
                seen.add((epoch, i))
    assert seen == {(e, i) for e in range(2) for i in single.split_indices["train"]}
