"""Bad input: the converter's error, and the count of what it skipped or repaired.

Every entry of the raw files is either kept as it is, kept with a documented default value
(*repaired*: counted, e.g. an item without text), or skipped (*malformed*: counted by kind, with
its first ``file:line`` locations). Skipped entries over ``max_bad_ratio`` of those read stop the
conversion before anything is written (:meth:`Problems.check`).
"""

from dataclasses import dataclass, field

import numpy as np

from recbole_cela.utils import PluginError

N_EXAMPLES = 5  # offending line numbers reported per kind of problem

#: The kind of a skipped line that is not UTF-8 text (see recbole_cela.data.source.read_lines).
NOT_UTF8 = "line not UTF-8 text"


class DataPreparationError(PluginError):
    """The raw data cannot be converted: says what was wrong and what to do about it."""


@dataclass
class Problems:
    """Skipped input entries, by kind, with the first offending ``file:line`` locations.

    ``total`` counts the entries read: lines of the input files, except in user_sequence.txt,
    where each item of a user's line is one entry (an unknown item drops one interaction) and
    a skipped line (no items, or a user seen before) one entry.
    """

    total: int = 0
    counts: dict = field(default_factory=dict)
    lines: dict = field(default_factory=dict)  # kind -> {file name: first line numbers}
    repaired: dict = field(default_factory=dict)  # kind -> {"count": n, "first": [item ids]}

    def add(self, kind, filename, line_numbers):
        line_numbers = np.asarray(line_numbers, dtype=np.int64)
        if line_numbers.size == 0:
            return
        self.counts[kind] = self.counts.get(kind, 0) + int(line_numbers.size)
        files = self.lines.setdefault(kind, {})
        earlier = np.asarray(files.get(filename, []), dtype=np.int64)
        first = np.union1d(earlier, line_numbers)[:N_EXAMPLES]
        files[filename] = first.tolist()

    def repair(self, kind, items):
        """Items kept with a default value (not skipped: they do not count against
        ``max_bad_ratio``), by kind, with the first few item ids."""
        items = list(items)
        if items:
            entry = self.repaired.setdefault(kind, {"count": 0, "first": []})
            entry["count"] += len(items)
            entry["first"] = (entry["first"] + [str(i) for i in items])[:N_EXAMPLES]

    def examples(self, kind):
        found = [f"{name}:{n}" for name, numbers in self.lines[kind].items() for n in numbers]
        return found[:N_EXAMPLES]

    @property
    def skipped(self):
        return sum(self.counts.values())

    def report(self):
        lines = [
            f"  {kind}: {count} (first at {', '.join(self.examples(kind))})"
            for kind, count in self.counts.items()
        ]
        if NOT_UTF8 in self.counts:
            lines.append("  (a file saved in another encoding: re-encode it as UTF-8, e.g. with "
                         "'iconv -f latin1 -t utf-8')")
        return (
            f"skipped {self.skipped} of {self.total} input entries "
            f"({self.skipped / max(self.total, 1):.4%}):\n" + "\n".join(lines)
        )

    def check(self, max_bad_ratio, logger):
        """Warn about skipped and repaired entries; raise when the skipped ones exceed
        ``max_bad_ratio`` of the input."""
        for kind, entry in self.repaired.items():
            logger.warning(f"Kept with a default value: {kind}: {entry['count']} "
                           f"(first: {', '.join(entry['first'])})")
        if not self.counts:
            return
        if self.skipped > max_bad_ratio * self.total:
            raise DataPreparationError(
                f"Too much malformed input: {self.report()}\nThis is more than "
                f"max_bad_ratio={max_bad_ratio}. Fix or re-download the input files, or raise "
                f"max_bad_ratio in the dataset config if losing these entries is acceptable. "
                f"Nothing was written."
            )
        logger.warning(f"Malformed input {self.report()}")
