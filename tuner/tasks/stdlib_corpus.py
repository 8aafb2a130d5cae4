"""The texts of the built-in encoder examples: docstrings of the Python standard library, collected in a fresh
interpreter.

Run as a script (``python -I stdlib_corpus.py``) it prints them as JSON. Collected in a process that has imported
other packages, the list would depend on them: importing ``logging.handlers`` or ``email.headerregistry`` makes them
attributes of their package, and some packages replace stdlib functions. Then the same model would score differently
in a study, in `tuner verify` and in a deployment check.
"""

import importlib
import inspect
import json
import sys
import warnings

# Modules whose docstrings make the corpus; a fixed list keeps the corpus the same across runs.
CORPUS_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions",
    "ftplib", "functools", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile",
)


def collect(min_chars: int = 80) -> list[str]:
    """Docstrings (first paragraphs joined into one text) of public stdlib objects, in a stable order."""
    texts: dict[str, None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in CORPUS_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            objects = [module] + [getattr(module, attr) for attr in sorted(vars(module))
                                  if not attr.startswith("_")]
            for obj in objects:  # the module itself, and the classes and functions it defines (not submodules)
                if obj is not module and not (
                        (inspect.isclass(obj) or inspect.isfunction(obj))
                        and getattr(obj, "__module__", None) == module.__name__):
                    continue
                doc = inspect.getdoc(obj) or ""
                text = " ".join(" ".join(doc.split("\n\n")[:2]).split())
                if len(text) >= min_chars:
                    texts.setdefault(text)
    return list(texts)


if __name__ == "__main__":
    json.dump(collect(int(sys.argv[1]) if len(sys.argv) > 1 else 80), sys.stdout)
