"""Text corpora by domain, made on the machine, and their non-IID split.

The default corpus is the docstrings of the installed Python standard library,
grouped into four domains (web, concurrency, numeric, text). Docstrings are
read with :mod:`ast` from the source files, so nothing is imported and no
network is touched. Users can instead pass their own ``.txt`` files (documents
separated by blank lines, domain = file stem) or ``.jsonl`` files (one object
per line with ``"text"`` and optionally ``"domain"``).

Each domain's documents are divided three ways: held-out evaluation text, a
public slice the server may use (tokenizer training, central warm-up) and the
private training text that is split across clients with a Dirichlet prior.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Standard-library modules and packages whose docstrings make up each domain.
STDLIB_DOMAINS: dict[str, tuple[str, ...]] = {
    "web": ("http", "urllib", "email", "html", "json", "wsgiref", "smtplib", "ftplib",
            "imaplib", "poplib", "socketserver", "xmlrpc", "ipaddress", "mimetypes"),
    "concurrency": ("threading", "multiprocessing", "asyncio", "concurrent", "queue",
                    "subprocess", "sched", "selectors", "_threading_local"),
    "numeric": ("_pydecimal", "fractions", "statistics", "random", "numbers", "colorsys",
                "heapq", "bisect", "datetime", "calendar"),
    "text": ("string", "re", "textwrap", "difflib", "codecs", "shlex", "gettext", "locale",
             "csv", "tokenize", "pprint", "reprlib", "argparse", "optparse", "configparser",
             "fnmatch", "glob", "base64", "quopri"),
}

HELDOUT_FRACTION = 0.1
PUBLIC_FRACTION = 0.15


@dataclass(frozen=True)
class Corpus:
    """Documents by domain, already divided into public, held-out and private text.

    Attributes:
        public: Text the server may see (tokenizer training and warm-up).
        heldout: Evaluation text per domain; never trained on.
        clients: Private training documents of each client, as (domain, text).
    """

    public: dict[str, list[str]]
    heldout: dict[str, list[str]]
    clients: list[list[tuple[str, str]]]

    @property
    def domains(self) -> list[str]:
        """The domain names, sorted."""
        return sorted(self.heldout)


def _module_files(stdlib: Path, module: str) -> list[Path]:
    """Source files of a stdlib module or package, skipping test folders."""
    package = stdlib / module
    if package.is_dir():
        return [p for p in sorted(package.rglob("*.py"))
                if not {"test", "tests"} & set(p.relative_to(stdlib).parts)]
    single = stdlib / f"{module}.py"
    return [single] if single.is_file() else []


def _docstrings(path: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40:
                yield doc.strip()


def _capped(docs: Iterator[str], max_chars: int) -> list[str]:
    """Takes documents until ``max_chars`` characters are collected."""
    kept: list[str] = []
    total = 0
    for doc in docs:
        if total >= max_chars:
            break
        kept.append(doc)
        total += len(doc)
    return kept


def stdlib_documents(max_chars_per_domain: int) -> dict[str, list[str]]:
    """Docstrings of the installed standard library, grouped by domain.

    Args:
        max_chars_per_domain: Stop collecting a domain after this many characters.

    Returns:
        Domain name -> documents, deterministic for a given Python installation.

    Raises:
        RuntimeError: if the standard library sources are not installed.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    result: dict[str, list[str]] = {}
    for domain, modules in STDLIB_DOMAINS.items():
        files = (f for m in modules for f in _module_files(stdlib, m))
        result[domain] = _capped((d for f in files for d in _docstrings(f)),
                                 max_chars_per_domain)
    if min(len(docs) for docs in result.values()) < 3:
        raise RuntimeError(f"standard-library sources not found under {stdlib}; "
                           "pass your own text with --data")
    return result


def _read_user_file(path: Path) -> Iterator[tuple[str, str]]:
    """(domain, document) pairs of one user file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with a 'text' string")
            yield str(record.get("domain", path.stem)), record["text"]
        return
    for block in text.split("\n\n"):
        if block.strip():
            yield path.stem, block.strip()


def user_documents(paths: Sequence[str], max_chars_per_domain: int) -> dict[str, list[str]]:
    """Documents from user ``.txt``/``.jsonl`` files, grouped by domain.

    Raises:
        ValueError: if a domain ends up with fewer than 3 documents (too few to
            keep held-out and public text).
    """
    grouped: dict[str, list[str]] = {}
    for path in paths:
        for domain, doc in _read_user_file(Path(path)):
            grouped.setdefault(domain, []).append(doc)
    result = {d: _capped(iter(docs), max_chars_per_domain) for d, docs in sorted(grouped.items())}
    for domain, docs in result.items():
        if len(docs) < 3:
            raise ValueError(f"domain {domain!r} has {len(docs)} documents; need at least 3")
    if not result:
        raise ValueError("no documents found in the --data files")
    return result


def dirichlet_split(labels: Sequence[str], num_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[list[int]]:
    """Splits item indices across clients, label by label, with Dirichlet proportions.

    For every label, the client shares are drawn from ``Dir(alpha)``: a small
    ``alpha`` gives each client few domains, a large one an IID split. Every
    client is guaranteed at least one item (taken from the largest client).

    Returns:
        Per client, the sorted indices it holds.
    """
    if len(labels) < num_clients:
        raise ValueError(f"{len(labels)} training documents cannot cover {num_clients} clients")
    owners = np.empty(len(labels), dtype=np.int64)
    for label in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        rng.shuffle(idx)  # ok: data split, not a secret
        shares = rng.dirichlet(np.full(num_clients, alpha))  # ok: data split, not a secret
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for client, part in enumerate(np.split(idx, cuts)):
            owners[part] = client
    counts = np.bincount(owners, minlength=num_clients)
    for empty in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        moved = int(np.flatnonzero(owners == donor)[0])
        owners[moved] = empty
        counts[donor] -= 1
        counts[empty] += 1
    return [sorted(np.flatnonzero(owners == c).tolist()) for c in range(num_clients)]


def build_corpus(documents: dict[str, list[str]], num_clients: int, alpha: float,
                 seed: int) -> Corpus:
    """Divides documents into public, held-out and per-client private text.

    Args:
        documents: Domain -> documents.
        num_clients: Number of clients to split the private text across.
        alpha: Dirichlet concentration of the split.
        seed: Seed of the numpy generator that shuffles and splits the data.
    """
    rng = np.random.default_rng(seed)  # ok: data split, not a secret
    public: dict[str, list[str]] = {}
    heldout: dict[str, list[str]] = {}
    private: list[tuple[str, str]] = []
    for domain in sorted(documents):
        docs = list(documents[domain])
        order = rng.permutation(len(docs))  # ok: data split, not a secret
        n_held = max(1, int(len(docs) * HELDOUT_FRACTION))
        n_pub = max(1, int(len(docs) * PUBLIC_FRACTION))
        heldout[domain] = [docs[i] for i in order[:n_held]]
        public[domain] = [docs[i] for i in order[n_held:n_held + n_pub]]
        private.extend((domain, docs[i]) for i in order[n_held + n_pub:])
    split = dirichlet_split([d for d, _ in private], num_clients, alpha, rng)
    return Corpus(public=public, heldout=heldout,
                  clients=[[private[i] for i in part] for part in split])


def load_corpus(data: Sequence[str], num_clients: int, alpha: float, seed: int,
                max_chars_per_domain: int) -> Corpus:
    """The run's corpus: user files when given, else the stdlib docstrings."""
    documents = (user_documents(data, max_chars_per_domain) if data
                 else stdlib_documents(max_chars_per_domain))
    return build_corpus(documents, num_clients, alpha, seed)
