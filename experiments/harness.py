"""The command line and work-directory rules shared by every experiment.

    python -m experiments.<name> --workdir DIR [--config FILE[:VARIANT]] \
        [--config.KEY=VALUE ...] [--compilation_cache DIR]
    python -m experiments.<name>_report --workdir DIR   # re-render only

* ``--config`` is an ml_collections config file (locked: an override of an
  unknown key is an error); ``FILE:VARIANT`` calls ``get_config(VARIANT)``.
  A tuple option takes a comma list, ``--config.seeds=0,1`` or
  ``--config.regimens=none,dropout``, typed after the default's elements.
* The work directory remembers its config (``config.json``): a later run
  whose numbers-defining keys differ is refused (:class:`ConfigMismatchError`)
  instead of mixing results of two configs. Each experiment names the keys
  that may change freely (its ``VOLATILE_KEYS``).
* One process per work directory (:func:`workdir_lock`).
* The persistent XLA compilation cache is on for the experiment entry points
  (``--compilation_cache``, default ``~/.cache/dropjax/jax``; ``""`` turns
  it off), so a second run of a command skips most compilation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import optax

from dropjax.losses import check_labels
from dropjax.train import files as _files

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
RESULTS_FILE = "results.json"
DEFAULT_COMPILATION_CACHE = "~/.cache/dropjax/jax"
_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

write_text_atomic = _files.write_text_atomic
write_json_atomic = _files.write_json_atomic


class ConfigMismatchError(ValueError):
  """The work directory holds results of a different config."""


class WorkdirLockedError(RuntimeError):
  """Another process is using the work directory."""


class TupleSyntaxError(ValueError):
  """A tuple option given on the command line could not be read."""


class ConfigError(ValueError):
  """Bad input found before any training (a config value, the data, the
  labels): the command line prints the message as one error, without a
  traceback, and leaves no files behind in a new work directory."""


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
  """Turns the ``ValueError``, ``KeyError``, ``FileNotFoundError`` and
  ``dropjax.data.DataError`` raised inside into :class:`ConfigError` (same
  message, the original as ``__cause__``). Wrap an experiment's checks that
  run before training."""
  from dropjax.data import DataError

  try:
    yield
  except ConfigError:
    raise
  except (ValueError, KeyError, FileNotFoundError, DataError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise ConfigError(msg) from e


def check_dataset(config, ds) -> None:
  """Inputs of the model's size and labels in ``[0, K)``, before training,
  for an image data set (:class:`dropjax.data.ImageDataset`) and an MLP
  config (``config.model.layer_sizes``, ``config.data.source``).

  Raises:
    ValueError: naming the split and the config key to change.
  """
  n_in = math.prod(ds.train.images.shape[1:])
  if n_in != int(config.model.layer_sizes[0]):
    raise ValueError(
      f"the images of {config.data.source!r} have shape "
      f"{tuple(ds.train.images.shape[1:])} ({n_in} inputs) but the model "
      f"takes {config.model.layer_sizes[0]}: set the first entry of "
      "--config.model.layer_sizes to match."
    )
  k = int(config.model.layer_sizes[-1])
  for split, labels in (
    ("training", ds.train.labels),
    ("validation", ds.validation.labels),
    ("test", ds.test.labels),
  ):
    try:
      check_labels(
        labels, k, what=f"the {split} labels of {config.data.source!r}"
      )
    except ValueError as e:
      raise ValueError(
        f"{e} Fix the data, or the model's output size (the last entry "
        "of --config.model.layer_sizes)."
      ) from None


def config_path(name: str) -> str:
  """The path of ``experiments/configs/<name>.py``."""
  return os.path.join(_CONFIGS, f"{name}.py")


# ---------------------------------------------------------------- configs


def config_dict(config) -> dict:
  """A JSON-ready nested dict of a ConfigDict (or a mapping)."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(dict(config), default=str))


def flatten(d: Mapping, prefix: str = "") -> dict:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _is_volatile(key: str, volatile: Sequence[str]) -> bool:
  return any(key == v or key.startswith(v + ".") for v in volatile)


def _drop_volatile(d: Mapping, volatile: Sequence[str], prefix: str = ""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if _is_volatile(key, volatile):
      continue
    out[k] = (
      _drop_volatile(v, volatile, key + ".") if isinstance(v, Mapping) else v
    )
  return out


def fingerprint(config, volatile: Sequence[str] = ()) -> str:
  """A short hash of the config without its volatile keys."""
  d = _drop_volatile(config_dict(config), volatile)
  return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def config_differences(
  old: Mapping, new: Mapping, volatile: Sequence[str] = ()
) -> list[str]:
  """``["key: old -> new", ...]`` over the non-volatile flattened keys."""
  fo, fn = flatten(old), flatten(new)
  missing = "(absent)"
  out = []
  for k in sorted(set(fo) | set(fn)):
    if _is_volatile(k, volatile) or fo.get(k, missing) == fn.get(k, missing):
      continue
    out.append(f"{k}: {fo.get(k, missing)!r} -> {fn.get(k, missing)!r}")
  return out


def _read_saved_config(path: str) -> dict:
  with open(path) as f:
    saved = json.load(f)
  # Older language-model work directories: {"fingerprint", "config"}.
  if set(saved) == {"fingerprint", "config"} and isinstance(
    saved["config"], Mapping
  ):
    return saved["config"]
  return saved


def check_config(workdir: str, config, volatile: Sequence[str] = ()) -> None:
  """Refuses a config that differs from the work directory's; records it.

  The first run writes ``workdir/config.json`` (the full config); later runs
  compare every key except the ``volatile`` ones (dotted prefixes) and
  rewrite the file.

  Raises:
    ConfigMismatchError: some non-volatile key differs; the message names
      every one as ``key: old -> new``.
  """
  new = config_dict(config)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    diffs = config_differences(_read_saved_config(path), new, volatile)
    if diffs:
      raise ConfigMismatchError(
        f"{workdir} holds results of a different config ("
        + "; ".join(diffs)
        + "); use another --workdir."
      )
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(path, new)


def load_config_file(spec: str):
  """Loads ``FILE[:VARIANT]`` as ml_collections does (``get_config``)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_harness_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


_SYNTAX = (
  "write a tuple option as a comma list, e.g. --config.{key}={eg} "
  "(no spaces), or as a quoted Python tuple, "
  '--config.{key}="({eg_t})", or repeat the flag, '
  "--config.{key}={one} --config.{key}=..."
)


def _syntax(key: str, example: Sequence) -> str:
  eg = [str(x) for x in example[:2]] or ["a", "b"]
  quoted = [repr(x) for x in example[:2]] or ["'a'", "'b'"]
  return _SYNTAX.format(
    key=key, eg=",".join(eg), eg_t=", ".join(quoted), one=eg[0]
  )


def _cast(x, kind: type, key: str, example: Sequence):
  bad = TupleSyntaxError(
    f"--config.{key}: cannot read {x!r} as {kind.__name__}; "
    + _syntax(key, example)
  )
  if isinstance(x, str):
    x = x.strip()
    if not x:
      raise bad
    try:
      if kind is bool:
        if x.lower() not in ("true", "false", "1", "0"):
          raise ValueError(x)
        return x.lower() in ("true", "1")
      return kind(x)
    except ValueError:
      raise bad from None
  if kind is float and isinstance(x, int) and not isinstance(x, bool):
    return float(x)
  if isinstance(x, kind) and not (kind is int and isinstance(x, bool)):
    return x
  raise bad


def parse_tuple_overrides(config, defaults) -> list[str]:
  """Reads comma lists given for tuple options, typed after the defaults.

  ml_collections reads ``--config.seeds=0,1`` as ``(0, 1)`` but
  ``--config.regimens=none,dropout`` as ``("none,dropout",)``: here every
  string element of a tuple option is split at commas and cast to the type
  of the default tuple's elements. ``config`` is changed in place.

  Returns:
    The keys that were rewritten.

  Raises:
    TupleSyntaxError: an element that is empty or of the wrong type.
  """
  changed = []
  if hasattr(defaults, "to_dict"):
    defaults = defaults.to_dict()
  for key, default in flatten(defaults).items():
    if not isinstance(default, tuple) or not default:
      continue
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
      node = node[p]
    value = node[parts[-1]]
    if not isinstance(value, tuple):
      continue
    kind = type(default[0])
    if kind not in (int, float, str, bool) or any(
      type(d) is not kind for d in default
    ):
      continue
    items = []
    for x in value:
      if isinstance(x, str) and (kind is not str or "," in x):
        items.extend(x.split(","))
      else:
        items.append(x)
    new = tuple(_cast(x, kind, key, default) for x in items)
    if new != value or any(type(a) is not type(b) for a, b in zip(new, value)):
      node[parts[-1]] = new
      changed.append(key)
  return changed


# --------------------------------------------------------------- workdirs


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[str]:
  """Holds an exclusive lock on ``workdir/.lock`` (``fcntl.flock``).

  Raises:
    WorkdirLockedError: another process (or another open of the file) holds
      it; nothing waits.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  f = open(path, "a+")
  try:
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "?"
      raise WorkdirLockedError(
        f"{workdir} is in use by another process (pid {holder}, lock "
        f"{path}); wait for it to finish or use another --workdir."
      ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    try:
      yield path
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
  finally:
    f.close()


def enable_compilation_cache(directory: str | None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``directory``.

  Every compiled program is cached (no minimum compile time or size), so a
  rerun of the same command loads instead of compiling. ``""`` or ``None``
  leaves the cache off. Returns the directory used.
  """
  if not directory:
    return None
  import jax

  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def warmup_cosine(
  peak: float, warmup_fraction: float, steps: int
) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup_fraction`` of ``steps``, then
  cosine decay to 0 at ``steps`` (``optax.warmup_cosine_decay_schedule``)."""
  warmup = int(round(float(warmup_fraction) * steps))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=float(peak),
    warmup_steps=max(warmup, 1),
    decay_steps=steps,
    end_value=0.0,
  )


def save_figure_atomic(fig, path: str, **savefig_kwargs) -> None:
  """Saves a matplotlib figure atomically (temp file beside it + rename)."""
  root, ext = os.path.splitext(path)
  fd, tmp = tempfile.mkstemp(
    prefix="." + os.path.basename(root) + ".",
    suffix=ext or ".png",
    dir=os.path.dirname(path) or ".",
  )
  os.close(fd)
  try:
    fig.savefig(tmp, **savefig_kwargs)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def software_versions(*extra_modules: str) -> dict[str, Any]:
  """Versions of the software stack, the devices and the machine's load."""
  import dropjax
  import flax
  import jax
  import numpy as np
  import optax

  out = {
    "dropjax": dropjax.__version__,
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
  }
  for name in extra_modules:
    out[name] = importlib.import_module(name).__version__
  out["devices"] = [str(d) for d in jax.devices()]
  out["cpu_count"] = os.cpu_count()
  out["loadavg"] = [round(v, 2) for v in os.getloadavg()]
  return out


# ------------------------------------------------------------ entry points


def _fail(name: str, message: str) -> None:
  sys.exit(f"{name}: error: {message}")


def _flags_parser(name: str):
  from absl import flags

  def parse(argv):
    # absl's --help exits 1; asking for help is no error here.
    asked = [
      a
      for a in argv[1:]
      if a in ("-h", "-help", "--help", "--helpshort", "--helpfull")
    ]
    if asked:
      from absl import app

      app.usage(shorthelp=asked[0] != "--helpfull", writeto_stdout=True)
      sys.exit(0)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      text = str(e)
      if "Traceback" in text:  # a config file that failed: its last line
        last = [l for l in text.splitlines() if l.strip()][-1].strip()
        _fail(name, f"{text.split(': Error whilst', 1)[0]}: {last}")
      msg = " ".join(text.split())
      if "as tuple" in msg:
        msg += " Accepted: --config.KEY=a,b or --config.KEY='(a, b)'."
      _fail(name, msg)
    except (AttributeError, KeyError) as e:  # a key the config lacks
      _fail(
        name,
        f"unknown config key {e}: a --config.KEY override must "
        "name a key of the config file.",
      )

  return parse


def main(
  run: Callable[[Any, str], Any],
  *,
  config: str,
  name: str,
  after: Callable[[Any, str, Any], None] | None = None,
) -> None:
  """The command line of an experiment (see the module docstring).

  Args:
    run: ``run(config, workdir)``, the experiment.
    config: the default config file.
    name: the experiment's name, for messages.
    after: called as ``after(config, workdir, result)`` when ``run``
      returned.
  """
  from absl import app
  from absl import flags
  from absl import logging
  from ml_collections import config_flags

  workdir_flag = flags.DEFINE_string(
    "workdir", None, "Output directory (required)."
  )
  try:  # this scans sys.argv for --config.KEY overrides already
    config_flag = config_flags.DEFINE_config_file(
      "config",
      config,
      "Experiment config file (ml_collections); "
      "FILE:VARIANT selects a variant, e.g. "
      f"{os.path.relpath(config)}:smoke.",
      lock_config=True,
    )
  except (AttributeError, KeyError) as e:
    _fail(
      name,
      f"unknown config key {e}: a --config.KEY override must "
      "name a key of the config file.",
    )
  cache_flag = flags.DEFINE_string(
    "compilation_cache",
    DEFAULT_COMPILATION_CACHE,
    "Persistent XLA compilation cache directory ('' = off).",
  )

  def _main(argv):
    if len(argv) > 1:
      _fail(name, f"unexpected arguments: {argv[1:]}")
    workdir = workdir_flag.value
    if not workdir:
      _fail(name, "--workdir is required (where results go).")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # orbax logs saves at INFO
    spec = flags.FLAGS["config"].config_filename
    if not os.path.isfile(spec.partition(":")[0]):
      _fail(
        name,
        f"no config file {spec.partition(':')[0]!r} (--config "
        "FILE or FILE:VARIANT).",
      )
    try:
      cfg = config_flag.value
      defaults = load_config_file(spec)
    except Exception as e:  # noqa: BLE001 -- one line, not a traceback
      _fail(name, f"cannot load the config {spec!r}: {type(e).__name__}: {e}")
    try:
      parse_tuple_overrides(cfg, defaults)
    except TupleSyntaxError as e:
      _fail(name, str(e))
    enable_compilation_cache(cache_flag.value)
    created = not os.path.exists(workdir)
    try:
      with workdir_lock(workdir):
        result = run(cfg, workdir)
    except (ConfigMismatchError, WorkdirLockedError, ConfigError) as e:
      _fail(name, str(e))
    finally:
      if (
        created
        and os.path.isdir(workdir)
        and set(os.listdir(workdir)) <= {LOCK_FILE}
      ):
        with contextlib.suppress(OSError):
          os.unlink(os.path.join(workdir, LOCK_FILE))
          os.rmdir(workdir)
    if after is not None:
      after(cfg, workdir, result)

  app.run(_main, flags_parser=_flags_parser(name))


def report_main(render: Callable[[dict, str], Any], *, name: str) -> None:
  """The command line of a report: re-renders ``--workdir`` (or ``DIR``).

  ``render(results, workdir)`` gets the parsed ``workdir/results.json``.
  """
  from absl import app
  from absl import flags

  workdir_flag = flags.DEFINE_string(
    "workdir",
    None,
    "Work directory with results.json (or give it as the only argument).",
  )

  def _main(argv):
    workdir = workdir_flag.value
    if not workdir and len(argv) == 2:
      workdir = argv[1]
    elif len(argv) > 1:
      _fail(name, f"unexpected arguments: {argv[1:]}")
    if not workdir:
      _fail(name, "--workdir is required (the directory with results.json).")
    path = os.path.join(workdir, RESULTS_FILE)
    if not os.path.exists(path):
      _fail(name, f"no {path}: run the experiment there first.")
    with open(path) as f:
      results = json.load(f)
    render(results, workdir)
    print(f"wrote {os.path.join(workdir, 'report.md')}")

  app.run(_main, flags_parser=_flags_parser(name))
