"""Reproducible, resumable, distributed sampling.

:class:`EpochSampler` yields batches of ``(index, sample_seed)`` pairs for one
rank of a (possibly distributed) run, with repeated augmentation (Hoffer et al.
2020, used by DeiT and CaiT with 3 repeats) and mid-epoch resume.
:class:`SeededDataset` seeds every sample's augmentation from its
``sample_seed``, so a batch is bit-identical whatever worker process loads it,
and :func:`make_loader` glues the two into a ``DataLoader``. Orders and seeds
are pure functions of ``(seed, epoch, position)`` (SplitMix64 hashing).
"""

from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSampler", "SeededDataset", "make_loader"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_seeds(seed: int, epoch: int, positions: np.ndarray | None = None) -> np.ndarray:
    """Deterministic 63-bit ints from (seed, epoch[, position]); one per position."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
        h = _splitmix64(h ^ np.uint64(epoch & _MASK64))
        if positions is not None:
            h = _splitmix64(h ^ positions.astype(np.uint64))
    return h >> np.uint64(1)  # keep 63 bits: valid for torch.manual_seed and signed int64


class EpochSampler(Sampler):
    """Batch sampler for one rank: yields lists of ``(index, sample_seed)``.

    Per epoch (:meth:`set_epoch`) the global order is built from ``(seed,
    epoch)`` only:

    1. a permutation of ``range(dataset_len)`` from a ``torch.Generator`` seeded
       with hash(seed, epoch) (identity order if ``shuffle=False``);
    2. repeated augmentation (Hoffer et al. 2020; DeiT/CaiT use 3): every index
       appears ``repeats`` times in a row;
    3. padding (wrapping around) to a multiple of ``num_replicas``;
    4. rank ``r`` takes global positions ``r, r + R, r + 2R, ...`` (R =
       num_replicas), so the consecutive copies of one image go to different
       ranks (if ``repeats <= num_replicas``) and get different augmentations;
    5. each rank keeps only its first ``dataset_len // num_replicas`` samples:
       DeiT's rule, so an epoch is as long as without repeats (about
       ``dataset_len / repeats`` distinct images are seen per epoch). With
       ``drop_last`` this is rounded down to whole batches.

    With ``repeats=1`` this is an ordinary distributed shuffling sampler.
    ``sample_seed`` = hash(seed, epoch, global position), a 63-bit int: it fixes
    that sample's augmentation (see :class:`SeededDataset`) whatever process
    loads it.

    Mid-epoch resume: after ``set_start_batch(k)`` every ``iter()`` skips the
    first ``k`` batches of the current epoch; iterating does not consume the
    offset. It lasts until :meth:`set_epoch` selects a different epoch, which
    resets it to 0 (``set_epoch`` with the current epoch keeps it).
    """

    def __init__(self, dataset_len: int, *, batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0, repeats: int = 1, drop_last: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if batch_size < 1 or repeats < 1 or dataset_len < 1:
            raise ValueError("dataset_len, batch_size and repeats must be >= 1")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.repeats = repeats
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.num_samples = dataset_len // num_replicas  # samples per rank per epoch
        if drop_last:
            self.num_samples = self.num_samples // batch_size * batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order iterations yield.

        A different epoch than the current one resets the start batch to 0; the
        current epoch keeps it. Returning to an epoch later does not restore it.
        """
        if epoch != self.epoch:
            self.start_batch = 0
        self.epoch = epoch

    def set_start_batch(self, k: int) -> None:
        """Skip the first ``k`` batches of the current epoch (mid-epoch resume).

        The offset applies to every ``iter()`` of this epoch, not only the next
        one, until :meth:`set_epoch` selects a different epoch. This matters
        because a ``DataLoader`` with worker processes calls ``iter()`` on its
        batch sampler more than once when it starts (twice, as of torch 2.14), and
        each call must skip the same batches.
        """
        if not 0 <= k <= len(self):
            raise ValueError(f"start batch must be in [0, {len(self)}], got {k}")
        self.start_batch = k

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]))
        self.set_start_batch(int(state.get("start_batch", 0)))

    def __len__(self) -> int:
        """Number of batches this rank yields per epoch."""
        return math.ceil(self.num_samples / self.batch_size)

    def epoch_samples(self, epoch: int | None = None) -> list[tuple[int, int]]:
        """This rank's ``(index, sample_seed)`` list for an epoch (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        n, R = self.dataset_len, self.num_replicas
        if self.shuffle:
            g = torch.Generator().manual_seed(int(_hash_seeds(self.seed, epoch)[0]))
            order = torch.randperm(n, generator=g).numpy()  # (n,)
        else:
            order = np.arange(n)
        order = np.repeat(order, self.repeats)  # (n * repeats,): copies side by side
        total = math.ceil(len(order) / R) * R
        order = np.resize(order, total)  # pad by wrapping around to a multiple of R
        positions = np.arange(self.rank, total, R)[: self.num_samples]  # this rank's global positions
        seeds = _hash_seeds(self.seed, epoch, positions)
        return list(zip(order[positions].tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.start_batch  # not reset here: it holds for every iter() of this epoch
        samples = self.epoch_samples()
        bs = self.batch_size
        batches = [samples[i:i + bs] for i in range(0, len(samples), bs)]
        return iter(batches[start:])


class SeededDataset(Dataset):
    """Makes a dataset's random augmentation a function of a per-sample seed.

    ``ds[(index, sample_seed)]`` returns ``dataset[index]`` computed with torch's
    CPU RNG and Python's ``random`` seeded by ``sample_seed``; both RNG states
    are restored afterwards, so the caller's global randomness is untouched.
    (torchvision.transforms.v2 draws from torch's global CPU RNG.) A plain
    ``ds[index]`` is passed through unseeded.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, (tuple, list)):
            return self.dataset[key]
        index, sample_seed = key
        py_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):  # restores the CPU RNG on exit
                torch.default_generator.manual_seed(int(sample_seed))
                random.seed(int(sample_seed))
                return self.dataset[int(index)]
        finally:
            random.setstate(py_state)


def make_loader(dataset: Dataset, sampler: EpochSampler, *, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """``DataLoader`` over ``SeededDataset(dataset)`` driven by an :class:`EpochSampler`.

    Call ``sampler.set_epoch(e)`` (and, to resume, ``sampler.set_start_batch(k)``)
    before iterating; the offset holds for every iteration of epoch ``e``.
    Workers are not persistent, so each iteration re-reads the sampler's state.
    """
    return DataLoader(SeededDataset(dataset), batch_sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False)
