"""Inverted-file oracles: brute-force coarse assignment and probing, loop-built layout."""

from __future__ import annotations

import numpy as np

__all__ = [
    "probed_rows",
    "ivf_similarity_ref",
    "ivf_assign_ref",
    "ivf_layout_ref",
    "ivf_probe_ref",
    "random_layout",
    "random_probes",
]


def ivf_similarity_ref(x, centroids, metric):
    """float64 (n, nlist): <x, c> for ip, -|x - c|^2 for l2."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if metric == "ip":
        return x @ c.T
    out = np.empty((x.shape[0], c.shape[0]))
    for i in range(x.shape[0]):
        out[i] = -((x[i][None, :] - c) ** 2).sum(axis=1)
    return out


def ivf_assign_ref(x, centroids, metric):
    """int64 (n,): the first best list of each row."""
    sim = ivf_similarity_ref(x, centroids, metric)
    if sim.shape[0] == 0:
        return np.empty(0, np.int64)
    return np.argmax(sim, axis=1).astype(np.int64)


def ivf_layout_ref(lists, nlist):
    """Rows of list 0 in input order, then list 1, ...; offsets int64 (nlist + 1,)."""
    order, offsets = [], [0]
    for lst in range(nlist):
        rows = [i for i, v in enumerate(lists) if v == lst]
        order.extend(rows)
        offsets.append(offsets[-1] + len(rows))
    return np.array(order, dtype=np.int64), np.array(offsets, dtype=np.int64)


def ivf_probe_ref(q, centroids, nprobe, metric):
    """float32 (nq, P) scores and int64 (nq, P) lists, P = min(nprobe, nlist), best first,
    ties by smaller list; scores are <q, c> (ip) or -|q - c|^2 (l2)."""
    sim = ivf_similarity_ref(q, centroids, metric)
    p = min(nprobe, np.asarray(centroids).shape[0])
    out_s = np.empty((sim.shape[0], p), dtype=np.float32)
    out_i = np.empty((sim.shape[0], p), dtype=np.int64)
    lists = np.arange(sim.shape[1])
    for i in range(sim.shape[0]):
        order = np.lexsort((lists, -sim[i]))[:p]
        out_s[i], out_i[i] = sim[i, order], lists[order]
    return out_s, out_i


def random_layout(rng, n, nlist):
    """Test inputs for the scan kernels: list offsets int64 (nlist + 1,) of n rows split at
    random (empty lists included) and distinct, shuffled ids int64 (n,)."""
    sizes = rng.multinomial(n, np.ones(nlist) / nlist) if nlist else np.zeros(0, np.int64)
    offsets = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    ids = rng.permutation(3 * n + 5)[:n].astype(np.int64)
    return offsets, ids


def random_probes(rng, nq, nlist, n_probe):
    """int64 (nq, n_probe): distinct lists per query, some slots -1 (skipped)."""
    out = np.full((nq, n_probe), -1, dtype=np.int64)
    for q in range(nq):
        k = min(n_probe, nlist)
        out[q, :k] = rng.permutation(nlist)[:k]
        out[q] = np.where(rng.random(n_probe) < 0.2, -1, out[q])
        rng.shuffle(out[q])
    return out


def probed_rows(list_offsets, probes, n_tables):
    """(probe index, table index, row) for every row of every probed list (probes -1 skipped);
    the table is the probe's own when there is one per probe (n_tables > 1), else 0."""
    for p, lst in enumerate(probes):
        if lst < 0:
            continue
        for i in range(list_offsets[lst], list_offsets[lst + 1]):
            yield p, (p if n_tables > 1 else 0), i
