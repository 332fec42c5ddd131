"""METEOR, ROUGE_L and CIDEr through ``pycocoevalcap``, as the official E2E scorer runs them.

The official scorer builds COCO-style dicts (one "image" per MR, all its
references as captions), and ``COCOEvalCap.evaluate`` then

1. tokenises references and hypotheses with the Stanford PTBTokenizer
   (lowercased, punctuation tokens dropped) -- here ``metrics.ptb.coco_tokenize``,
   a pure-Python equivalent, so ROUGE_L and CIDEr need no Java;
2. scores the token strings with ``Meteor()`` (METEOR 1.5 jar, ``-l en -norm``,
   one Java process, corpus score from its final ``EVAL`` line), ``Rouge()``
   (LCS F-measure, beta 1.2, best precision and recall over the references,
   mean over MRs) and ``Cider()`` (CIDEr-D, n=4, sigma=6, document frequencies
   from the references of the evaluated set, mean over MRs).

Only METEOR needs ``java``; without it METEOR is reported as ``None``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _meteor_module
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from metrics.ptb import coco_tokenize

__all__ = [
    "MeteorProcess", "cider", "coco_scores", "meteor", "meteor_unavailable_reason", "rouge_l", "start_meteor",
    "tokenize_for_coco",
]  # fmt: skip

# COCO-style inputs: MR index -> list of token strings (one for a hypothesis).
TokenDicts = tuple[dict[int, list[str]], dict[int, list[str]]]


def tokenize_for_coco(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> TokenDicts:
    """PTB-tokenise like ``COCOEvalCap``: returns ``(gts, res)`` keyed by MR index.

    References are lexed as one stream and hypotheses as another, in order, like
    the two tokenizer calls of the original.
    """
    flat = coco_tokenize([ref for group in refs for ref in group])
    gts: dict[int, list[str]] = {}
    pos = 0
    for i, group in enumerate(refs):
        gts[i] = flat[pos : pos + len(group)]
        pos += len(group)
    res = {i: [tok] for i, tok in enumerate(coco_tokenize(list(hyps)))}
    return gts, res


def rouge_l(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """ROUGE_L (pycocoevalcap ``Rouge``) on tokenised dicts."""
    return float(Rouge().compute_score(gts, res)[0])


def cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """CIDEr-D (pycocoevalcap ``Cider``) on tokenised dicts."""
    return float(Cider().compute_score(gts, res)[0])


class MeteorProcess(Meteor):
    """pycocoevalcap's METEOR wrapper with a process we start and stop ourselves.

    Same jar and arguments as the original (``-Xmx2G ... - - -stdio -l en -norm``),
    plus ``-Dfile.encoding=UTF-8`` so non-ASCII words ("café") reach METEOR intact
    whatever the locale (the wrapper sends UTF-8). Java's stderr goes to a temp
    file (a pipe nobody reads could fill up and hang it) and is quoted if METEOR
    fails. Use as a context manager; ``close()`` kills and reaps the process.
    Starting it early lets the JVM load its paraphrase table while Python works.
    """

    def __init__(self, java: str = "java") -> None:  # not calling super().__init__: we start the process
        jar_dir = Path(_meteor_module.__file__).resolve().parent
        self.meteor_cmd = [
            java, "-Xmx2G", "-Dfile.encoding=UTF-8", "-jar", _meteor_module.METEOR_JAR,
            "-", "-", "-stdio", "-l", "en", "-norm",
        ]  # fmt: skip
        self._stderr = tempfile.TemporaryFile()
        self.meteor_p = subprocess.Popen(
            self.meteor_cmd, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.lock = threading.Lock()

    def submit(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> None:
        """Send every MR to METEOR now (from a thread) and collect its replies in the background.

        Speaks the wrapper's protocol -- one ``SCORE ||| ref ||| ... ||| hyp`` line
        per MR (hypothesis cleaned as the wrapper's ``_stat`` does), then one
        ``EVAL ||| stats ||| ...`` line whose last reply is the corpus score -- but
        pipelined instead of one round trip per MR (same numbers, far less waiting
        on a busy machine), and asynchronous, so Python can compute the other
        metrics meanwhile. ``result()`` returns the score.
        """
        if gts.keys() != res.keys():
            raise ValueError("METEOR: references and hypotheses have different MR ids")
        if self.meteor_p is None:
            raise RuntimeError("METEOR process already closed")
        lines = []
        for key in gts:
            if len(res[key]) != 1:
                raise ValueError(f"METEOR: MR {key} needs exactly one hypothesis")
            hyp = res[key][0].replace("|||", "").replace("  ", " ")
            lines.append(" ||| ".join(("SCORE", " ||| ".join(gts[key]), hyp)) + "\n")
        proc = self.meteor_p
        self._errors: list[BaseException] = []
        self._stats: list[str] = []

        def write_all() -> None:
            try:
                proc.stdin.write("".join(lines).encode("utf-8"))
                proc.stdin.flush()
            except OSError as exc:  # METEOR died; the reader sees EOF
                self._errors.append(exc)

        def read_all() -> None:
            try:
                self._stats.extend(self._reply(proc) for _ in lines)
            except (ValueError, OSError) as exc:
                self._errors.append(exc)

        self._threads = [threading.Thread(target=f, daemon=True) for f in (write_all, read_all)]
        for thread in self._threads:
            thread.start()

    def result(self) -> float:
        """Wait for the replies to ``submit`` and return the corpus METEOR score."""
        proc = self.meteor_p
        try:
            for thread in self._threads:
                thread.join()
            if self._errors:
                raise self._errors[0]
            proc.stdin.write(("EVAL ||| " + " ||| ".join(self._stats) + "\n").encode("utf-8"))
            proc.stdin.flush()
            for _ in self._stats:  # per-MR scores, not needed
                self._reply(proc)
            return float(self._reply(proc))
        except (ValueError, OSError, AttributeError) as exc:
            detail = ""
            if not self._stderr.closed:
                self._stderr.seek(0)
                detail = self._stderr.read().decode("utf-8", "replace").strip()[-2000:]
            self.close()
            raise RuntimeError(f"METEOR (java) failed: {exc}\n{detail}".rstrip()) from exc

    def score(self, gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
        """Corpus METEOR of tokenised dicts (``submit`` + ``result``)."""
        self.submit(gts, res)
        return self.result()

    @staticmethod
    def _reply(proc: subprocess.Popen[bytes]) -> str:
        line = proc.stdout.readline().decode("utf-8").strip()
        if not line:
            raise ValueError("METEOR closed its output early")
        return line

    def close(self) -> None:
        """Stop the Java process and release its pipes (idempotent)."""
        proc = getattr(self, "meteor_p", None)
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.meteor_p = None

    # The base class's __del__ assumes a live process; ours may already be closed.
    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot run here (``None`` when it can)."""
    if shutil.which("java") is None:
        return "java not found on PATH"
    return None


def start_meteor(enabled: bool = True) -> MeteorProcess | None:
    """Start METEOR's JVM now (it takes seconds to load), or return ``None``.

    ``None`` when ``enabled`` is false, or when Java is missing -- then with a
    clear note on stderr, so callers report METEOR as unavailable.
    """
    if not enabled:
        return None
    reason = meteor_unavailable_reason()
    if reason is not None:
        print(f"METEOR unavailable: {reason}; reporting METEOR as None", file=sys.stderr)
        return None
    return MeteorProcess()


def meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float | None:
    """Corpus METEOR 1.5 on tokenised dicts; ``None`` (with a note on stderr) without Java."""
    proc = start_meteor()
    if proc is None:
        return None
    with proc:
        return proc.score(gts, res)


def coco_scores(
    refs: Sequence[Sequence[str]], hyps: Sequence[str], *, with_meteor: bool = True
) -> dict[str, float | None]:
    """``{"METEOR", "ROUGE_L", "CIDEr"}`` for raw texts; METEOR is ``None`` if skipped or unavailable.

    METEOR's JVM is started first and fed as soon as the texts are tokenised, so it
    loads and scores while ROUGE_L and CIDEr are computed.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups")
    proc = start_meteor(with_meteor)
    try:
        gts, res = tokenize_for_coco(refs, hyps)
        if proc is not None:
            proc.submit(gts, res)
        scores: dict[str, float | None] = {"METEOR": None, "ROUGE_L": rouge_l(gts, res), "CIDEr": cider(gts, res)}
        if proc is not None:
            scores["METEOR"] = proc.result()
    finally:
        if proc is not None:
            proc.close()
    return {key: scores[key] for key in ("METEOR", "ROUGE_L", "CIDEr")}
