"""Weight-graph clusterability: spectral clustering, n-cut and shuffle tests.

Implements the MLP protocol of Filan, Casper, Hod, Wild, Critch & Russell,
"Clusterability in neural networks" (arXiv:2103.03386), following its
official code (``dfilan/clusterability_in_neural_networks``,
``src/spectral_cluster_model.py``):

1. **Weight graph** (:func:`weight_graph`): one node per neuron of every
   layer, the inputs and outputs included; an edge between consecutive layers
   with weight ``|w_ij|``; biases ignored; pruned (zero) weights give no edge.
2. **Isolated-node deletion** (:func:`remove_isolated_nodes`): nodes with no
   edge at all are deleted before clustering, from the graph and from the
   weight matrices.
3. **Spectral clustering** (:func:`spectral_cluster`): scikit-learn's
   ``SpectralClustering`` on the precomputed adjacency, ARPACK eigensolver,
   k-means label assignment with 25 inits (100 above 2000 nodes).
4. **n-cut** (:func:`ncut`): ``sum_k cut(X_k, V \\ X_k) / (vol(X_k) + 1e-8)``;
   lower means more clusterable; range ``[0, K]``.
5. **Shuffle baseline** (:func:`shuffle_weights`, :func:`clusterability`):
   the n-cut of the network is compared with that of ``N`` copies whose
   weights are permuted within each (already reduced) matrix; every copy goes
   through isolated-node deletion again. ``z = (ncut - mean) / sd`` (population
   SD) and ``p = (#{shuffled < observed} + 1) / (N + 1)``.

Clustering runs on the host with NumPy/SciPy/scikit-learn (imported lazily).
Randomness is explicit: the shuffles and the clustering seeds derive from the
``key`` passed in, so a result is reproducible for a given key.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dropjax.analysis.pruning import is_kernel

NCUT_EPSILON = 1e-8
SHUFFLE_METHODS = ("layer", "layer_nonzero")


# --------------------------------------------------------------------------
# Inputs, randomness.
# --------------------------------------------------------------------------


def as_weight_list(weights) -> list[np.ndarray]:
  """Extracts the ordered 2-D kernels of an MLP as float64 NumPy arrays.

  Args:
    weights: a sequence of 2-D kernels ``(fan_in, fan_out)`` in layer order,
      or any params pytree: its leaves with ``ndim >= 2`` are taken in
      flatten order and leaves with ``ndim < 2`` (biases) are ignored.

  Returns:
    A list of float64 arrays ``[(n_0, n_1), (n_1, n_2), ...]``.

  Raises:
    ValueError: if there is no kernel, a kernel has ``ndim > 2`` (only MLP
      weight graphs are implemented), or consecutive shapes do not chain
      (``W_l.shape[1] != W_{l+1}.shape[0]``).
  """
  leaves = [
    leaf for leaf in jax.tree_util.tree_leaves(weights) if is_kernel(leaf)
  ]
  if not leaves:
    raise ValueError("no 2-D weight matrices found.")
  out = []
  for i, w in enumerate(leaves):
    if w.ndim != 2:
      raise ValueError(
        f"kernel {i} has shape {tuple(w.shape)}; the weight graph is only "
        "defined here for dense (2-D) kernels."
      )
    out.append(np.asarray(w, dtype=np.float64))
  for i in range(len(out) - 1):
    if out[i].shape[1] != out[i + 1].shape[0]:
      raise ValueError(
        f"kernel {i} has shape {out[i].shape} but kernel {i + 1} has shape "
        f"{out[i + 1].shape}: consecutive layers must chain."
      )
  return out


def _seed_sequence(key) -> np.random.SeedSequence:
  """A NumPy SeedSequence derived from a JAX key, an int or a SeedSequence."""
  if isinstance(key, np.random.SeedSequence):
    # A fresh copy, so that spawning never depends on earlier use of ``key``.
    return np.random.SeedSequence(key.entropy, spawn_key=key.spawn_key)
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return np.random.SeedSequence(int(key))
  arr = key
  if hasattr(arr, "dtype") and jax.dtypes.issubdtype(
    arr.dtype, jax.dtypes.prng_key
  ):
    arr = jax.random.key_data(arr)
  data = np.asarray(arr)
  if data.dtype.kind not in "ui" or data.size == 0:
    raise TypeError(
      "key must be a jax.random.key, a raw uint32 key array, an int seed, "
      f"a numpy SeedSequence or Generator; got {type(key).__name__}."
    )
  return np.random.SeedSequence(
    [int(x) for x in data.astype(np.uint64).ravel()]
  )


def _as_rng(key_or_rng) -> np.random.Generator:
  if isinstance(key_or_rng, np.random.Generator):
    return key_or_rng
  return np.random.default_rng(_seed_sequence(key_or_rng))


# --------------------------------------------------------------------------
# Graph construction.
# --------------------------------------------------------------------------


def weight_graph(weights):
  """Symmetric adjacency matrix of an MLP's weight graph (Filan et al. 2021).

  Nodes are all neurons, ``n_0 + n_1 + ... + n_L`` of them in layer order
  (inputs first, outputs last). For kernels ``A, B, ...`` the matrix is
  block tri-diagonal::

      [[0    |A|  0  ...]
       [|A|^T 0   |B| ...]
       [0    |B|^T 0  ...] ...]

  Biases are ignored; zero weights give no edge.

  Args:
    weights: ordered 2-D kernels ``(fan_in, fan_out)`` or a params pytree
      (see :func:`as_weight_list`).

  Returns:
    A ``scipy.sparse.csr_array`` of float64, shape ``(n_nodes, n_nodes)``,
    symmetric with a zero diagonal.

  Raises:
    ValueError: as :func:`as_weight_list`.

  Example:
    >>> import numpy as np
    >>> a = weight_graph([np.array([[1., -2.]]), np.array([[3.], [0.]])])
    >>> a.toarray().tolist()
    [[0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 0.0, 3.0], [2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]]
  """
  from scipy import sparse

  ws = as_weight_list(weights)
  widths = [ws[0].shape[0]] + [w.shape[1] for w in ws]
  offsets = np.concatenate([[0], np.cumsum(widths)])
  n = int(offsets[-1])
  rows, cols, vals = [], [], []
  for l, w in enumerate(ws):
    i, j = np.nonzero(w)
    rows.append(i + offsets[l])
    cols.append(j + offsets[l + 1])
    vals.append(np.abs(w[i, j]))
  r = np.concatenate(rows)
  c = np.concatenate(cols)
  v = np.concatenate(vals)
  # int32 indices: scikit-learn rejects sparse inputs with int64 indices.
  upper = sparse.coo_array(
    (v, (r.astype(np.int32), c.astype(np.int32))), shape=(n, n)
  )
  return (upper + upper.T).tocsr()


def remove_isolated_nodes(weights) -> tuple[list[np.ndarray], np.ndarray]:
  """Deletes neurons without any non-zero edge (Filan et al.'s
  ``delete_isolated_ccs_refactored``).

  A neuron is isolated when all its incoming weights (its column in the
  previous kernel) and all its outgoing weights (its row in the next kernel)
  are zero. Its row/column is removed from the kernels. One pass suffices:
  removing a node without edges cannot isolate another. Unlike the official
  code (which keeps the output columns of the last matrix even if isolated),
  isolated output neurons are removed too, so the reduced matrices always
  describe the reduced graph exactly.

  Args:
    weights: ordered 2-D kernels or a params pytree.

  Returns:
    ``(reduced_weights, node_mask)``: the float64 kernels without the
    isolated neurons, and a bool array ``[n_nodes]`` over the original nodes
    (layer order), ``True`` for kept nodes.

  Raises:
    ValueError: as :func:`as_weight_list`.
  """
  ws = as_weight_list(weights)
  nz = [w != 0 for w in ws]
  keeps = []
  n_layers = len(ws) + 1
  for l in range(n_layers):
    width = ws[0].shape[0] if l == 0 else ws[l - 1].shape[1]
    has_edge = np.zeros(width, dtype=bool)
    if l > 0:
      has_edge |= nz[l - 1].any(axis=0)
    if l < len(ws):
      has_edge |= nz[l].any(axis=1)
    keeps.append(has_edge)
  reduced = [w[keeps[l]][:, keeps[l + 1]] for l, w in enumerate(ws)]
  return reduced, np.concatenate(keeps)


# --------------------------------------------------------------------------
# n-cut and clustering.
# --------------------------------------------------------------------------


def ncut(adjacency, labels, *, epsilon: float = NCUT_EPSILON) -> float:
  """Normalised cut of a partition (Shi & Malik 2000; Filan et al. 2021).

  ``ncut = sum_k cut(X_k, V \\ X_k) / (vol(X_k) + epsilon)``, summed over the
  labels that occur, where ``vol(X) = sum_{i in X} sum_j A_ij`` (the summed
  degrees) and ``cut(X, Y) = sum_{i in X, j in Y} A_ij`` (as ``compute_ncut``
  in the official code). It lies in ``[0, K]``; lower means more clusterable.

  Args:
    adjacency: non-negative ``(n, n)`` array or SciPy sparse matrix/array,
      normally symmetric.
    labels: integer array ``[n]`` of cluster labels (any values).
    epsilon: added to every volume (``1e-8`` in the official code).

  Returns:
    The n-cut as a Python float.

  Raises:
    ValueError: for a non-square adjacency, a label array of the wrong
      length, or negative weights.

  Example:
    >>> import numpy as np
    >>> a = np.array([[0, 2, 0, 0], [2, 0, 1, 0], [0, 1, 0, 3], [0, 0, 3, 0.]])
    >>> round(ncut(a, [0, 0, 1, 1]), 6)  # 1/5 + 1/7
    0.342857
  """
  from scipy import sparse

  a = (
    sparse.csr_array(adjacency)
    if sparse.issparse(adjacency)
    else sparse.csr_array(np.asarray(adjacency, dtype=np.float64))
  )
  n = a.shape[0]
  if a.ndim != 2 or a.shape[1] != n:
    raise ValueError(f"adjacency must be square, got shape {a.shape}.")
  labels = np.asarray(labels).ravel()
  if labels.size != n:
    raise ValueError(f"labels has {labels.size} entries for {n} nodes.")
  if a.nnz and a.data.min() < 0:
    raise ValueError("adjacency must be non-negative.")
  uniq, idx = np.unique(labels, return_inverse=True)
  onehot = sparse.csr_array(
    (np.ones(n), (np.arange(n), idx)), shape=(n, uniq.size)
  )
  block = (onehot.T @ a @ onehot).toarray()  # [K, K] summed weights
  vol = block.sum(axis=1)
  cut = vol - np.diag(block)
  return float(np.sum(cut / (vol + epsilon)))


def spectral_cluster(
  adjacency,
  n_clusters: int,
  *,
  seed: int,
  eigen_solver: str = "arpack",
  threads: int | None = 1,
) -> np.ndarray:
  """Spectral clustering of a weighted graph, as in Filan et al. (2021).

  Calls ``sklearn.cluster.SpectralClustering(n_clusters,
  affinity="precomputed", eigen_solver="arpack", assign_labels="kmeans",
  n_init=25 (100 if the graph has more than 2000 nodes),
  random_state=seed)``. scikit-learn embeds the nodes with the ``K``
  eigenvectors of the symmetric normalised Laplacian with the smallest
  eigenvalues (the first one kept), scales the rows by ``D^{-1/2}`` and runs
  k-means on them. The seed fixes both the ARPACK start vector and k-means.

  Args:
    adjacency: symmetric non-negative ``(n, n)`` array or SciPy sparse
      matrix/array without isolated nodes.
    n_clusters: number of clusters ``K`` (``1 <= K < n``).
    seed: integer seed for scikit-learn's ``random_state``.
    eigen_solver: passed through (``"arpack"`` in the protocol).
    threads: BLAS/OpenMP threads used inside (via ``threadpoolctl``). The
      default 1 avoids the busy-waiting of multi-threaded k-means on a
      shared or oversubscribed machine (an order of magnitude slower there)
      and makes the result independent of the core count; ``None`` keeps the
      libraries' defaults. Parallelise over shuffles instead
      (``clusterability(..., n_jobs=...)``).

  Returns:
    int array ``[n]`` of labels in ``[0, K)``.

  Raises:
    ValueError: for ``n_clusters`` outside ``[1, n)``.
  """
  from scipy import sparse
  from sklearn.cluster import SpectralClustering

  n = adjacency.shape[0]
  if sparse.issparse(adjacency):
    adjacency = sparse.csr_array(adjacency)
    if adjacency.nnz < 2**31 - 1:  # scikit-learn wants int32 indices
      adjacency.indices = adjacency.indices.astype(np.int32)
      adjacency.indptr = adjacency.indptr.astype(np.int32)
  if not 1 <= n_clusters < n:
    raise ValueError(
      f"n_clusters must be in [1, {n}) for a graph with {n} nodes, got "
      f"{n_clusters}."
    )
  model = SpectralClustering(
    n_clusters=n_clusters,
    affinity="precomputed",
    eigen_solver=eigen_solver,
    assign_labels="kmeans",
    n_init=100 if n > 2000 else 25,
    random_state=int(seed),
  )
  if threads is None:
    return np.asarray(model.fit(adjacency).labels_)
  from threadpoolctl import threadpool_limits

  with threadpool_limits(limits=int(threads)):
    return np.asarray(model.fit(adjacency).labels_)


# --------------------------------------------------------------------------
# Shuffles and the significance test.
# --------------------------------------------------------------------------


def shuffle_weights(
  weights, key_or_rng, method: str = "layer"
) -> list[np.ndarray]:
  """Randomly permutes weights within each matrix (Filan et al. 2021).

  * ``"layer"``: permute all entries of each matrix, zeros included (a
    pruned net also gets a random sparsity pattern).
  * ``"layer_nonzero"``: permute the non-zero values among the non-zero
    positions, keeping each matrix's zero pattern.

  Each matrix keeps its multiset of values.

  Args:
    weights: ordered 2-D kernels or a params pytree.
    key_or_rng: a ``jax.random.key`` (or raw uint32 key), an int seed, a
      ``numpy.random.SeedSequence`` or a ``numpy.random.Generator`` (which is
      advanced in place).
    method: ``"layer"`` or ``"layer_nonzero"``.

  Returns:
    A list of float64 arrays with the shapes of the kernels.

  Raises:
    ValueError: for an unknown method (the message lists the valid ones) or
      a malformed ``weights``.
  """
  if method not in SHUFFLE_METHODS:
    raise ValueError(
      f"unknown shuffle method {method!r}; valid methods are "
      f"{', '.join(repr(m) for m in SHUFFLE_METHODS)}."
    )
  rng = _as_rng(key_or_rng)
  out = []
  for w in as_weight_list(weights):
    flat = w.ravel()
    if method == "layer":
      new = rng.permutation(flat)
    else:
      idx = np.flatnonzero(flat)
      new = np.zeros_like(flat)
      new[idx] = flat[idx[rng.permutation(idx.size)]]
    out.append(new.reshape(w.shape))
  return out


@dataclasses.dataclass(frozen=True)
class ClusterabilityResult:
  """Outcome of :func:`clusterability`.

  Attributes:
    ncut: n-cut of the network's own clustering.
    shuffled_ncuts: float64 ``[N]``, n-cuts of the shuffled networks.
    shuffled_mean: mean of ``shuffled_ncuts``.
    shuffled_std: population standard deviation (``ddof=0``) of
      ``shuffled_ncuts``.
    z: ``(ncut - shuffled_mean) / shuffled_std``; strongly negative means
      more clusterable than chance (``+-inf`` or NaN when the SD is 0).
    p_value: ``(#{shuffled_ncuts < ncut} + 1) / (N + 1)``; the minimum
      ``1 / (N + 1)`` means the network beats every shuffle (Filan et al.'s
      criterion for "significantly clusterable").
    n_nodes: number of nodes clustered (after isolated-node deletion).
    labels: int ``[n_nodes]``, cluster labels of the kept nodes.
    node_mask: bool ``[n_nodes_total]``, which original neurons (layer order,
      inputs first) were kept; ``labels`` lines up with its ``True`` entries.
    n_clusters: ``K``.
    shuffle: the shuffle method.
  """

  ncut: float
  shuffled_ncuts: np.ndarray
  shuffled_mean: float
  shuffled_std: float
  z: float
  p_value: float
  n_nodes: int
  labels: np.ndarray
  node_mask: np.ndarray
  n_clusters: int
  shuffle: str

  @property
  def min_p_value(self) -> float:
    """The smallest attainable p-value, ``1 / (N + 1)``."""
    return 1.0 / (self.shuffled_ncuts.size + 1)

  @property
  def significant(self) -> bool:
    """True when the n-cut is below every shuffled n-cut (``p = 1/(N+1)``)."""
    return bool(np.all(self.shuffled_ncuts > self.ncut))


def _cluster_ncut(weights, n_clusters, seed, eigen_solver):
  reduced, mask = remove_isolated_nodes(weights)
  adj = weight_graph(reduced)
  labels = spectral_cluster(
    adj, n_clusters, seed=seed, eigen_solver=eigen_solver
  )
  return ncut(adj, labels), labels, reduced, mask


def _cluster_seed(ss: np.random.SeedSequence) -> int:
  return int(ss.generate_state(1, np.uint32)[0])


def _shuffled_ncut(reduced, child, shuffle, n_clusters, eigen_solver):
  """n-cut of one shuffled copy; all randomness comes from ``child``."""
  shuffle_ss, clust_ss = child.spawn(2)
  sw = shuffle_weights(reduced, shuffle_ss, shuffle)
  return _cluster_ncut(sw, n_clusters, _cluster_seed(clust_ss), eigen_solver)[0]


def clusterability(
  weights,
  *,
  n_clusters: int = 12,
  n_shuffles: int = 50,
  key,
  shuffle: str = "layer",
  eigen_solver: str = "arpack",
  n_jobs: int = 1,
) -> ClusterabilityResult:
  """n-cut of an MLP's weight graph against shuffled copies (Filan et al.).

  Protocol (``shuffle_and_cluster`` / ``run_clustering`` of the official
  code, with the 2021 paper's settings as defaults: ``K = 12``, 50 ``"layer"``
  shuffles):

  1. Build the kernels' weight graph and delete isolated nodes
     (:func:`remove_isolated_nodes`), reducing the kernels accordingly.
  2. Cluster the reduced graph (:func:`spectral_cluster`) and take its
     :func:`ncut`.
  3. ``n_shuffles`` times: shuffle the *reduced* kernels
     (:func:`shuffle_weights`), delete isolated nodes again, cluster, n-cut.
  4. ``z = (ncut - mean) / std`` with the population SD, and
     ``p = (#{shuffled < ncut} + 1) / (n_shuffles + 1)``.

  Reproducibility: a ``numpy.random.SeedSequence`` is derived from ``key``
  and spawned into ``n_shuffles + 1`` children; child 0 seeds the clustering
  of the network, child ``i`` seeds shuffle ``i`` and its clustering. The
  same key gives the same result (on the same software stack).

  Cost: ``n_shuffles + 1`` clusterings, each one ARPACK shift-invert
  eigen-solve plus 25 k-means runs. For a 784-256-256-256-256-10 network
  (1818 nodes) that is about 1.3 s of one CPU core per clustering, so about
  65 s of CPU for 50 shuffles; ``n_jobs=2`` splits it over two cores.

  Args:
    weights: ordered 2-D kernels ``(fan_in, fan_out)`` of an MLP, or a params
      pytree whose leaves with ``ndim >= 2`` (flatten order) are those
      kernels; biases are ignored.
    n_clusters: number of clusters ``K``.
    n_shuffles: number of shuffled networks ``N`` (``>= 1``).
    key: a ``jax.random.key`` (or raw uint32 key, int seed or
      ``numpy.random.SeedSequence``).
    shuffle: ``"layer"`` or ``"layer_nonzero"``.
    eigen_solver: passed to scikit-learn (``"arpack"`` in the protocol).
    n_jobs: worker processes for the shuffles (``joblib``); 1 runs them in
      this process. The result does not depend on ``n_jobs``.

  Returns:
    A :class:`ClusterabilityResult`.

  Raises:
    ValueError: for a malformed ``weights``, an unknown shuffle method,
      ``n_shuffles < 1`` or ``n_clusters`` out of range.
  """
  if shuffle not in SHUFFLE_METHODS:
    raise ValueError(
      f"unknown shuffle method {shuffle!r}; valid methods are "
      f"{', '.join(repr(m) for m in SHUFFLE_METHODS)}."
    )
  if n_shuffles < 1:
    raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}.")
  children = _seed_sequence(key).spawn(n_shuffles + 1)
  observed, labels, reduced, mask = _cluster_ncut(
    weights, n_clusters, _cluster_seed(children[0]), eigen_solver
  )
  args = (shuffle, n_clusters, eigen_solver)
  if n_jobs == 1:
    values = [_shuffled_ncut(reduced, c, *args) for c in children[1:]]
  else:
    import joblib

    values = joblib.Parallel(n_jobs=n_jobs)(
      joblib.delayed(_shuffled_ncut)(reduced, c, *args) for c in children[1:]
    )
  shuffled = np.asarray(values, dtype=np.float64)
  mean = float(np.mean(shuffled))
  std = float(np.std(shuffled))
  with np.errstate(divide="ignore", invalid="ignore"):
    z = float(np.float64(observed - mean) / np.float64(std))
  p = (int(np.sum(shuffled < observed)) + 1) / (n_shuffles + 1)
  return ClusterabilityResult(
    ncut=observed,
    shuffled_ncuts=shuffled,
    shuffled_mean=mean,
    shuffled_std=std,
    z=z,
    p_value=p,
    n_nodes=int(labels.size),
    labels=labels,
    node_mask=mask,
    n_clusters=int(n_clusters),
    shuffle=shuffle,
  )
