"""TREC formats: runs (`qid Q0 docid rank score tag`), qrels (`qid iter docid rel`), TSV topics.

Runs are read twice as fast as ir_measures alone and still validated line by line in effect: a
vectorized reader (`fast_run`) handles files it can vouch for, and declines anything unusual (a
short or long line, a rank that is not a plain integer, a duplicate, a NaN, odd whitespace). A
declined file goes through the line-by-line reader (`checked_run`), which is the reference: it
accepts exactly the same files, gives the same run, and names the file, line and problem otherwise.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from itertools import repeat
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.io.text import brief, gc_paused, has_whitespace, id_problem, numbered_lines, read_lines, read_text
from harness.records import Qrel, Run, ScoredDoc, sort_trec

# Below this size the line-by-line reader is fast enough, and pandas is not imported.
FAST_MIN_BYTES = 1 << 20

RUN_COLUMNS = "'qid Q0 docid rank score tag'"


def read_run(path: str | Path, *, notes: list[str] | None = None) -> Run:
    """Read a TREC run; documents of each query come back best first (trec_eval order).

    A byte-order mark and CRLF line ends are accepted and appended to `notes`.
    """
    raw = read_text(path, "run", notes)
    run = fast_run(raw) if len(raw) >= FAST_MIN_BYTES else None
    return run if run is not None else checked_run(path, raw)


def checked_run(path: str | Path, raw: bytes) -> Run:
    """The reference reader: every line checked in Python, the first problem named with its line."""
    run: Run = {}
    seen: dict[str, dict[str, int]] = {}
    ranks: dict[str, dict[int, int]] = {}
    with gc_paused():
        for number, line in numbered_lines(path, raw):
            cols = line.split()
            if len(cols) != 6:
                raise InputError(path, f"expected 6 columns {RUN_COLUMNS}, found {len(cols)}", line=number)
            qid, _, docid, rank_s, score_s, _ = cols
            try:
                rank = int(rank_s)
            except ValueError:
                raise InputError(path, f"rank {brief(rank_s)} is not an integer; expected the 4th column of "
                                 f"{RUN_COLUMNS} to be a whole number", line=number) from None
            if rank < 0:
                raise InputError(path, f"rank {rank} is negative; expected 0 or more", line=number)
            try:
                score = float(score_s)
            except ValueError:
                raise InputError(path, f"score {brief(score_s)} is not a number; expected the 5th column of "
                                 f"{RUN_COLUMNS} to be a number", line=number) from None
            if math.isnan(score):
                raise InputError(path, "score is NaN; expected a number", line=number)
            first = seen.setdefault(qid, {}).get(docid)
            if first is not None:
                raise InputError(path, f"document {brief(docid)} appears twice for query {brief(qid)} (first on line "
                                 f"{first}); expected each document once per query", line=number)
            seen[qid][docid] = number
            earlier = ranks.setdefault(qid, {}).get(rank)
            if earlier is not None:
                raise InputError(path, f"rank {rank} repeated for query {brief(qid)} (first on line {earlier}); "
                                 "expected distinct ranks per query", line=number)
            ranks[qid][rank] = number
            run.setdefault(qid, []).append(ScoredDoc(qid, docid, score))
        return {qid: sort_trec(docs) for qid, docs in run.items()}


# Bytes that Python's str.split() treats as whitespace or that pandas treats as a line end, but the
# other does not: their presence sends a file to the line-by-line reader.
_ODD_BYTES = (b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\x1f")
_UNICODE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def fast_run(raw: bytes) -> Run | None:
    """`checked_run` vectorized with pandas and numpy, or None when the input is not plainly valid.

    It returns a run only for input on which `checked_run` returns the same run: every line has six
    whitespace-separated columns, ranks are non-negative integers, scores numbers that are not NaN, no
    document or rank repeats within a query. Everything else, valid or not, is left to `checked_run`.
    """
    if any(b in raw for b in _ODD_BYTES) or (b"\r" in raw and raw.count(b"\r") != raw.count(b"\r\n")):
        return None
    if not raw.isascii():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _UNICODE_SPACE.search(text):
            return None
    frame = _read_frame(raw)
    if frame is None:
        return None
    return _frame_to_run(frame)


def _read_frame(raw: bytes) -> Any:
    import numpy as np
    import pandas as pd

    options: dict[str, Any] = {}
    if tuple(int(x) for x in re.findall(r"\d+", pd.__version__)[:2]) < (3, 1):
        options["float_precision"] = "round_trip"  # Python's own parser; from pandas 3.1 all are exact
    try:
        # In chunks (low_memory, the default: a third faster), each chunk's number columns typed on
        # their own: a chunk with "1.0" for a rank makes the column float64, which is declined below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            frame = pd.read_csv(io.BytesIO(raw), sep=r"\s+", header=None, dtype=dict.fromkeys((0, 1, 2, 5), object),
                                na_filter=False, quoting=csv.QUOTE_NONE, engine="c", encoding="utf-8", **options)
    except (ValueError, IndexError, KeyError):  # pandas' ParserError is a ValueError; so is a bad dtype
        return None
    if frame.shape[1] != 6 or frame[3].dtype != np.int64 or frame[4].dtype not in (np.int64, np.float64):
        return None
    if (frame[5].to_numpy(object) == "").any():  # a short line: pandas fills its last columns with ""
        return None
    return frame


def _frame_to_run(frame: Any) -> Run | None:
    import numpy as np
    import pandas as pd

    qids, docids = frame[0].to_numpy(object), frame[2].to_numpy(object)
    ranks = frame[3].to_numpy(np.int64)
    scores = frame[4].to_numpy(np.float64)
    if (ranks < 0).any() or np.isnan(scores).any():
        return None
    qcodes, unique_q = pd.factorize(qids)  # codes in order of first appearance, as checked_run's dict
    qcodes = qcodes.astype(np.int64)
    same_q = qcodes[1:] == qcodes[:-1]
    grouped = bool((qcodes[1:] >= qcodes[:-1]).all())  # the lines of each query are together
    # Distinct ranks per query: rising within each group of lines (the usual file), else counted.
    if not (grouped and (ranks[1:][same_q] > ranks[:-1][same_q]).all()):
        rcodes, unique_r = pd.factorize(ranks)
        if len(pd.unique(qcodes * len(unique_r) + rcodes)) != len(qcodes):
            return None  # a rank twice for a query
    # trec_eval order within each query: score descending, ties by doc id descending.
    if grouped and (scores[1:][same_q] <= scores[:-1][same_q]).all():
        order = np.arange(len(qcodes))  # already best first (ties are put right below)
    else:
        order = np.lexsort((-scores, qcodes))
    q_sorted, s_sorted = qcodes[order], scores[order]
    tie = (q_sorted[1:] == q_sorted[:-1]) & (s_sorted[1:] == s_sorted[:-1])
    if tie.any():
        in_tie = np.zeros(len(order), dtype=bool)
        in_tie[1:] |= tie
        in_tie[:-1] |= tie
        group = np.cumsum(np.concatenate(([True], ~tie)))
        at = np.flatnonzero(in_tie)
        rows = order[at]
        groups, names = group[at].tolist(), docids[rows].tolist()
        by_name = sorted(range(len(at)), key=lambda k: (-groups[k], names[k]), reverse=True)
        order[at] = rows[by_name]
    bounds = np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1
    spans = list(zip([0, *bounds.tolist()], [*bounds.tolist(), len(order)], strict=True))
    doc_list = docids[order].tolist()
    if any(len(set(doc_list[a:b])) != b - a for a, b in spans):
        return None  # a document twice for a query
    rows_of = zip(unique_q[q_sorted].tolist(), doc_list, scores[order].tolist(), strict=True)
    with gc_paused():
        # tuple.__new__ straight from C: the namedtuple's own __new__ is a Python function
        scored = list(map(tuple.__new__, repeat(ScoredDoc), rows_of))
        return {scored[a].query_id: scored[a:b] for a, b in spans}


def trec_tag(name: str) -> str:
    """`name` as a TREC run tag: one token, whitespace runs turned into `_` (a model or file name with
    a space would otherwise become a seventh column, and the run could not be read back)."""
    return "_".join(name.split()) or "run"


def write_run(path: str | Path, run: Run, tag: str) -> None:
    """Write a run in TREC format, best first, ranks from 1. Byte-identical for equal runs.

    An id or tag with whitespace would come back as extra columns; the readers refuse such ids, and
    this refuses them again rather than write a file the harness cannot read."""
    if trec_tag(tag) != tag:
        raise InputError(path, f"run tag {brief(tag)} is not one token; expected a tag without whitespace "
                         f"(trec_tag gives {trec_tag(tag)!r})")
    for qid, docs in run.items():
        ids = [qid, *(d.doc_id for d in docs)]
        if not all(ids) or has_whitespace("".join(ids)):  # one search per query, not one per line
            problem = next(p for p in (id_problem(i, "id") for i in ids) if p)
            raise InputError(path, f"cannot write the run of query {brief(qid)}: {problem}")
    lines = []
    for qid in sorted(run):
        for rank, doc in enumerate(sort_trec(run[qid]), start=1):
            lines.append(f"{qid} Q0 {doc.doc_id} {rank} {doc.score!r} {tag}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_qrels(path: str | Path, *, notes: list[str] | None = None) -> list[Qrel]:
    """Read qrels in TREC (`qid iter docid rel`) or BEIR TSV (`query-id corpus-id score`) form."""
    qrels: list[Qrel] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in read_lines(path, "qrels", notes):
        cols = line.split()
        if number == 1 and cols[:2] == ["query-id", "corpus-id"]:
            continue  # BEIR header
        if len(cols) == 4:
            qid, _, docid, rel_s = cols
        elif len(cols) == 3:
            qid, docid, rel_s = cols
        else:
            raise InputError(
                path,
                f"expected 4 columns 'qid iter docid relevance' (or 3 in BEIR TSV), found {len(cols)}",
                line=number,
            )
        try:
            rel = int(rel_s)
        except ValueError:
            raise InputError(path, f"relevance {brief(rel_s)} is not an integer; expected a whole-number grade "
                             "such as 0, 1, 2", line=number) from None
        first = seen.get((qid, docid))
        if first is not None:
            raise InputError(path, f"query {brief(qid)} judges document {brief(docid)} twice (first on line {first}); "
                             "expected one judgment per query and document", line=number)
        seen[(qid, docid)] = number
        qrels.append(Qrel(qid, docid, rel))
    if not qrels:
        raise InputError(path, "no judgments found; expected lines 'qid iter docid relevance'")
    return qrels


def read_topics(path: str | Path, *, notes: list[str] | None = None) -> dict[str, str]:
    """Read TSV topics `qid<TAB>text`."""
    topics: dict[str, str] = {}
    for number, line in read_lines(path, "topics", notes):
        qid, sep, text = line.partition("\t")
        qid, text = qid.strip(), text.strip()
        if not sep:
            raise InputError(path, "expected 'qid<TAB>text', found no tab", line=number)
        if not qid:
            raise InputError(path, "query id is empty; expected 'qid<TAB>text'", line=number)
        problem = id_problem(qid, "query id")
        if problem:
            raise InputError(path, problem, line=number)
        if not text:
            raise InputError(path, f"query {brief(qid)} has empty text; expected 'qid<TAB>text'", line=number)
        if qid in topics:
            raise InputError(path, f"query id {brief(qid)} appears twice; expected each id once", line=number)
        topics[qid] = text
    return topics
