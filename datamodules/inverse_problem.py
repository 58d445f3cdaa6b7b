"""A LightningDataModule that synthesises measurements ``y = A x + η`` from any image dataset.

Reproducibility contract (DESIGN.md, "DataModules"): the noise of a val/test item is drawn from its
own generator, seeded by ``seed_for(seed, split_id, index)`` where ``index`` is the item's index into
``images``; so val/test measurements are identical for any batch size, worker count or world size,
and the global RNG is never used. Training items are ``{"x", "index"}`` only: the training steps draw
their own noise (``DiffpostModule.step_generator``), so synthesising a measurement per training image
would be wasted work. ``train_measurements=True`` adds ``y`` seeded by ``(seed, 0, index, epoch)``.

Exact resume: the training order is a pure function of ``(seed, epoch)`` (``EpochSampler``, sharded
over ranks like ``DistributedSampler``), and the train loader counts the batches it hands out. The
count is saved in every checkpoint (``state_dict``) and a resumed run starts the interrupted epoch
exactly that many batches in, so no batch is seen twice or skipped.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffpost.operators import GaussianNoise, LinearOperator
from diffpost.random import make_generator, seed_for

#: split ids mixed into noise seeds (part of the reproducibility contract: do not renumber)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_SHUFFLE_KEY = 97  # a seed key for the single-process training shuffle, distinct from the split ids


def task_record(operator: LinearOperator, sigma_y: float) -> dict[str, Any]:
    """What a model trained or evaluated on ``y = A x + N(0, σ_y²)`` depends on; checkpoints record it and
    reusing one for another task is refused (``lightning_modules.checkpoint.check_checkpoint_matches``)."""
    spec = operator_spec(operator)
    return {"x_shape": list(operator.x_shape), "operator": {"class_path": spec["class_path"], "init_args": spec["init_args"]},
            "operator_fingerprint": spec["fingerprint"], "sigma_y": float(sigma_y)}


def operator_spec(operator: LinearOperator) -> dict[str, Any]:
    """Plain-typed description of an operator: ``class_path``, ``init_args`` (its config) and ``fingerprint``."""
    cls = type(operator)
    return {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": operator.config(),
        "fingerprint": operator.fingerprint(),
    }


class MeasurementDataset(Dataset):
    """Items ``{"x", "y", "index"}`` for the given indices of ``images``; ``A x`` per sample on CPU.
    With ``measure=False`` items are ``{"x", "index"}`` and no measurement is synthesised."""

    def __init__(
        self,
        images: Dataset,
        operator: LinearOperator,
        noise: GaussianNoise,
        indices: range,
        split: str,
        seed: int,
        measure: bool = True,
    ):
        super().__init__()
        self.images, self.operator, self.noise = images, operator, noise
        self.indices, self.split, self.seed, self.measure = indices, split, int(seed), bool(measure)
        self.split_id = SPLIT_IDS[split]
        self.epoch = 0  # used by the train split only
        self._cpu_copy: LinearOperator | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def noise_seed(self, index: int) -> int:
        if self.split == "train":
            return seed_for(self.seed, self.split_id, index, self.epoch)
        return seed_for(self.seed, self.split_id, index)

    def image(self, index: int) -> torch.Tensor:
        x = self.images[index]
        if isinstance(x, (tuple, list)):  # (image, label) datasets
            x = x[0]
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"images[{index}] must be a floating-point tensor in [-1, 1], got {type(x).__name__}"
                            + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
        if tuple(x.shape) != self.operator.x_shape:
            raise ValueError(f"images[{index}] has shape {tuple(x.shape)} but the operator acts on x_shape {self.operator.x_shape}")
        return x

    def prepare(self) -> None:
        """Choose the operator used for synthesis, in the main process before workers start: the
        operator itself if its tensors are on CPU, else a CPU copy (a model may have moved a shared
        operator to the GPU; workers must not touch CUDA)."""
        self._cpu_copy = None if _on_cpu(self.operator) else copy.deepcopy(self.operator).to("cpu")

    def _synthesis_operator(self) -> LinearOperator:
        if self._cpu_copy is None and not _on_cpu(self.operator):
            self.prepare()
        return self.operator if self._cpu_copy is None else self._cpu_copy

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if state.get("_cpu_copy") is not None:
            state["operator"] = state["_cpu_copy"]  # never pickle CUDA tensors into workers
        return state

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        index = self.indices[k]
        x = self.image(index)
        if not self.measure:
            return {"x": x, "index": torch.tensor(index, dtype=torch.long)}
        with torch.no_grad():
            # float64 then rounded to x's precision: float32 BLAS results depend on the thread count
            # (main process vs single-threaded workers); rounded float64 results do not
            y_clean = self._synthesis_operator()(x[None].to(torch.float64))
            y = self.noise.sample(y_clean, make_generator(self.noise_seed(index)))[0]
        return {"x": x, "y": y.to(_matching_dtype(y.dtype, x.dtype)), "index": torch.tensor(index, dtype=torch.long)}


def _matching_dtype(y_dtype: torch.dtype, x_dtype: torch.dtype) -> torch.dtype:
    if y_dtype.is_complex:
        return torch.complex64 if x_dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.complex128
    return x_dtype


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in list(module.buffers()) + list(module.parameters()))


class EpochSampler(DistributedSampler):
    """The training order: a permutation seeded by ``(seed, epoch)`` (no global RNG), padded and
    sharded over ``num_replicas`` ranks exactly like ``DistributedSampler``, started ``start`` items
    into this rank's share (a resumed epoch). A ``DistributedSampler``, so Lightning keeps it under DDP
    instead of substituting its own."""

    def __init__(self, dataset: Dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed))
        self.start = 0

    def order(self, epoch: int) -> list[int]:
        """This rank's items of ``epoch``, from the beginning."""
        g = make_generator(seed_for(self.seed, _SHUFFLE_KEY, epoch))
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        perm += (perm * math.ceil(self.total_size / max(1, len(perm))))[: self.total_size - len(perm)]
        return perm[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        return iter(self.order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.num_samples  # the whole epoch: Lightning counts a resumed epoch's batches from its start


class ResumableLoader(DataLoader):
    """The training loader: counts the batches handed out in the current epoch (``state_dict``) and,
    after ``load_state_dict``, starts the interrupted epoch that many batches in.

    Iteration is lazy: the epoch is read from the sampler and the skip applied at the first ``next``,
    after Lightning has restored the checkpoint and called ``set_epoch``, whenever ``iter`` was called.
    Lightning fetches no batch ahead from a loader with a length, so the count is exactly the number
    of batches trained on when a checkpoint is written."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.epoch, self.batches, self._resume = 0, 0, None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self):
        epoch, start = self.sampler.epoch, 0
        if self._resume is not None:
            saved_epoch, batches = self._resume
            self._resume = None
            start = batches if saved_epoch == epoch else 0  # a finished epoch resumes at the next one's start
        if isinstance(self.dataset, MeasurementDataset):
            self.dataset.set_epoch(epoch)  # before workers start: they see the epoch of their items
        self.sampler.start = start * self.batch_size
        self.epoch, self.batches = epoch, start
        for batch in super().__iter__():
            self.batches += 1
            yield batch


class InverseProblemDataModule(LightningDataModule):
    """Images from ``images`` with synthesised measurements ``y = A x + η``, ``η ~ N(0, σ_y² I)``.

    Splits are disjoint index ranges of ``images``: val ``[0, n_val)``, test ``[n_val, n_val + n_test)``,
    train the next ``n_train`` indices (default: all the rest). Batches are dicts ``x (B, C, H, W)``,
    ``y (B, *y_shape)``, ``index (B,)`` (indices into ``images``); training batches have no ``y``
    unless ``train_measurements``.
    """

    def __init__(
        self,
        images: Dataset,
        operator: LinearOperator,
        sigma_y: float = 0.05,
        batch_size: int = 16,
        num_workers: int = 0,
        n_train: int | None = None,
        n_val: int = 64,
        n_test: int = 64,
        seed: int = 0,
        pin_memory: bool = False,
        train_measurements: bool = False,
    ):
        super().__init__()
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"InverseProblemDataModule: operator must be a diffpost LinearOperator, got {type(operator).__name__}")
        if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
            raise TypeError(f"InverseProblemDataModule: images must be a map-style dataset with __len__, got {type(images).__name__}")
        for name, value, lo in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("n_val", n_val, 0), ("n_test", n_test, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"InverseProblemDataModule: {name} must be an integer >= {lo}, got {value!r}")
        total = len(images)
        n_eval = n_val + n_test
        if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0):
            raise ValueError(f"InverseProblemDataModule: n_train must be None or an integer >= 0, got {n_train!r}")
        wanted = n_eval + (n_train or 0)
        if wanted > total:
            raise ValueError(
                f"InverseProblemDataModule: n_val + n_test{' + n_train' if n_train else ''} = {wanted} exceeds the "
                f"{total} images of {type(images).__name__}"
            )
        self._images = images
        self._operator = operator
        self._noise = GaussianNoise(sigma_y)  # validates sigma_y
        self.batch_size, self.num_workers, self.pin_memory, self.seed = batch_size, num_workers, bool(pin_memory), int(seed)
        self.train_measurements = bool(train_measurements)
        self._train_loader: ResumableLoader | None = None
        self._train_state: dict[str, int] | None = None
        n_train_eff = total - n_eval if n_train is None else n_train
        self.split_indices = {
            "val": range(0, n_val),
            "test": range(n_val, n_eval),
            "train": range(n_eval, n_eval + n_train_eff),
        }
        self._datasets: dict[str, MeasurementDataset] = {}
        # modules never go into hparams (checkpoints load with weights_only=True): a plain description
        self.save_hyperparameters(ignore=["images", "operator"])
        self.save_hyperparameters(
            {
                **self.hparams,
                "operator_spec": operator_spec(operator),
                "images_class": f"{type(images).__module__}.{type(images).__qualname__}",
                "n_images": total,
            }
        )

    # ------------------------------------------------------------------------- properties
    @property
    def operator(self) -> LinearOperator:
        return self._operator

    @property
    def noise(self) -> GaussianNoise:
        return self._noise

    @property
    def sigma_y(self) -> float:
        return self._noise.sigma_y

    @property
    def images(self) -> Dataset:
        return self._images

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self._operator.x_shape

    @property
    def y_shape(self) -> tuple[int, ...]:
        return self._operator.y_shape

    # ------------------------------------------------------------------------- datasets
    def dataset(self, split: str) -> MeasurementDataset:
        """The ``MeasurementDataset`` of ``split`` ("train", "val" or "test")."""
        if split not in SPLIT_IDS:
            raise ValueError(f"InverseProblemDataModule: split must be one of {list(SPLIT_IDS)}, got {split!r}")
        if split not in self._datasets:
            self._datasets[split] = MeasurementDataset(
                self._images, self._operator, self._noise, self.split_indices[split], split, self.seed,
                measure=split != "train" or self.train_measurements,
            )
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        self.check()

    def check(self) -> None:
        """Fail early (not inside a worker, and before a run writes anything) if images and operator disagree."""
        for split in ("val", "test", "train"):
            if len(self.split_indices[split]):
                self.dataset(split).image(self.split_indices[split][0])
                break

    def set_epoch(self, epoch: int) -> None:
        """Select the training noise epoch for manual iteration (Lightning sets it through the sampler)."""
        self.dataset("train").set_epoch(epoch)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        ds = self.dataset(split)
        ds.prepare()
        if len(ds) == 0:
            raise ValueError(f"InverseProblemDataModule: the {split} split is empty (check n_{split} and len(images))")
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory)
        if train:
            trainer = self.trainer  # under DDP each rank takes its share of the (seed, epoch) order
            replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            loader = ResumableLoader(ds, EpochSampler(ds, self.seed, replicas, rank), drop_last=False, **common)
            if self._train_state is not None:
                loader.load_state_dict(self._train_state)
                self._train_state = None
            self._train_loader = loader
            return loader
        return DataLoader(ds, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    # ------------------------------------------------------------------------- resume and identity
    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training loader is in its epoch."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loader_state = state.get("train_loader")
        if loader_state is None:
            return
        if self._train_loader is not None:  # the loader already exists: it applies the state at its next epoch
            self._train_loader.load_state_dict(loader_state)
        else:
            self._train_state = dict(loader_state)

    def task_record(self) -> dict[str, Any]:
        """This data's ``task_record`` (image shape, operator, σ_y)."""
        return task_record(self._operator, self.sigma_y)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def first_items(self, split: str, n: int | None = None, *, with_y: bool = True) -> dict[str, torch.Tensor]:
        """The first ``n`` items (default all) of ``split``, stacked: ``x``, ``index`` and, with ``with_y``,
        ``y`` (also for the train split, whose training items carry none). The one home of "the first n
        items of a split": exports, validation callbacks, sample.py's data configs and the benchmarks
        all see the same items with the same seeded noise, for any batch size or worker count."""
        ds = self.dataset(split)
        if with_y and not ds.measure:
            ds = copy.copy(ds)
            ds.measure = True
        size = len(ds)
        n = size if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= size:
            raise ValueError(f"first_items: n must be an integer in [0, {size}] for the {split} split, got {n!r}")
        ds.prepare()
        items = [ds[k] for k in range(n)]
        keys = ("x", "y", "index") if with_y else ("x", "index")
        return {k: torch.stack([it[k] for it in items]) if items else torch.empty(0) for k in keys}

    def val_subset(self, n: int) -> list[dict[str, torch.Tensor]]:
        """The first ``n`` validation items ``{"x", "y", "index"}`` (unbatched; fixed across calls)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self.split_indices["val"]):
            raise ValueError(f"val_subset: n must be an integer in [0, n_val={len(self.split_indices['val'])}], got {n!r}")
        items = self.first_items("val", n)
        return [{k: v[i] for k, v in items.items()} for i in range(n)]

    def export_measurements(self, path: str, split: str = "test", n: int | None = None) -> str:
        """Write the first ``n`` items of ``split`` to a ``.pt`` file (see ``datamodules.export``)."""
        from datamodules.export import export_measurements

        return export_measurements(self, path, split=split, n=n)
