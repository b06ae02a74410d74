"""Score a file of rows with a trained run: any model the runner trains, no retraining.

Command line::

    python -m recbole_cela.predict --checkpoint=saved/DIN-<run id>.pth --input=rows.inter --output=scores.tsv

Python::

    from recbole_cela.predict import predict_file
    summary = predict_file("saved/DIN-<run id>.pth", "rows.inter", "scores.tsv")

The input is a tab-separated file in the columns of the dataset's own ``.inter`` files (header
``user_id:token  item_id:token  item_id_list:token_seq``, with or without the ``:type`` part):
the user, the item and the history the model reads; a ``label`` column and any other column are
carried through unread. User and item features (age, genre, ...) are joined from the dataset's
``.user`` / ``.item`` files as RecBole joins them for training. A test split file
(``dataset/<DATASET>/<DATASET>.test.inter``) is a valid input.

The output repeats every input row, its columns unchanged, with the model's click probability
appended as ``score:float``. It is written atomically: a failure leaves no partial file. Rows
are read and scored in batches of ``eval_batch_size`` rows. A user, item or history item the
run never saw takes RecBole's padding id 0 (what the model knows of an unknown token) and is
counted in the summary, as is a history longer than the model's, of which the most recent items
are kept (the order of the converter's histories: oldest first).
"""

import argparse
import os
import sys
from logging import getLogger

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType, set_color

from recbole_cela.fileio import atomic_open
from recbole_cela.utils import PluginError

# The model reads the interaction's own fields; the user's and the item's features are joined.
_ROW_SOURCES = (FeatureSource.INTERACTION, FeatureSource.USER_ID, FeatureSource.ITEM_ID)


class RowScorer:
    """A loaded run (``load_data_and_model``'s config, model and dataset) scoring rows of strings."""

    def __init__(self, config, model, dataset):
        self.config, self.model, self.dataset = config, model.eval(), dataset
        self.separator = config["seq_separator"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        skip = {config["LABEL_FIELD"], self.length_field}
        self.fields = [f for f, source in dataset.field2source.items() if source in _ROW_SOURCES and f not in skip]
        self.history_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.unknown = dict.fromkeys(self.fields, 0)
        self.truncated = 0

    def check_columns(self, columns, path):
        names = {c.split(":")[0] for c in columns}
        missing = [f for f in self.fields if f not in names]
        if missing:
            raise PluginError(
                f"'{path}' lacks the column(s) {', '.join(missing)} that the model reads: its header must name the "
                f"dataset's .inter columns ({', '.join(self.fields)}; a label column is optional)."
            )

    def _tokens(self, field, values):
        ids = self.dataset.field2token_id[field]
        out = [ids.get(v, 0) for v in values]
        self.unknown[field] += sum(1 for v, i in zip(values, out) if i == 0)
        return torch.tensor(out, dtype=torch.long)

    def _sequences(self, field, values):
        ids, width = self.dataset.field2token_id[field], self.dataset.field2seqlen[field]
        rows = [v.split(self.separator) if v.strip() else [] for v in values]
        self.truncated += sum(1 for r in rows if len(r) > width)
        rows = [r[-width:] for r in rows]  # the most recent items of an oldest-first history
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for n, row in enumerate(rows):
            mapped = [ids.get(t, 0) for t in row]
            self.unknown[field] += mapped.count(0)
            out[n, : len(mapped)] = torch.tensor(mapped, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return out, lengths

    def interaction(self, frame):
        """The RecBole ``Interaction`` of rows given as a DataFrame of strings, features joined."""
        fields = {}
        for field in self.fields:
            values = frame[field].str.strip().tolist()
            kind = self.dataset.field2type[field]
            if kind == FeatureType.TOKEN:
                fields[field] = self._tokens(field, values)
            elif kind == FeatureType.TOKEN_SEQ:
                fields[field], lengths = self._sequences(field, values)
                if field == self.history_field and self.length_field in self.dataset.field2type:
                    fields[self.length_field] = lengths
            elif kind == FeatureType.FLOAT:
                fields[field] = torch.tensor(_floats(field, values), dtype=torch.float)
            else:
                raise PluginError(f"Column '{field}' is a {kind.value} field, which row scoring does not read.")
        return self.dataset.join(Interaction(fields))

    @torch.no_grad()
    def score(self, frame):
        """Click probabilities of the rows of ``frame`` (columns named without their type)."""
        interaction = self.interaction(frame).to(self.config["device"])
        return self.model.predict(interaction).float().cpu().numpy()


def _floats(field, values):
    try:
        return [float(v) for v in values]
    except ValueError as error:
        raise PluginError(f"Column '{field}' holds a value that is not a number ({error}).") from None


def _rows(path):
    with open(path, "rb") as f:
        return max(sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1, 0)


def predict_file(model_file, input_file, output_file, batch_size=None, config_dict=None, show_progress=True):
    """Score every row of ``input_file`` with the run of ``model_file`` into ``output_file``
    (atomically). Returns the summary: rows scored, unknown tokens per column, histories cut."""
    import pandas as pd
    from tqdm import tqdm

    from recbole_cela.loading import load_data_and_model

    if not os.path.isfile(input_file):
        raise PluginError(f"No input file '{input_file}'.")
    config, model, _, train_data, _, _ = load_data_and_model(model_file, config_dict)
    scorer = RowScorer(config, model, train_data.dataset)
    batch_size = batch_size or config["eval_batch_size"]
    chunks = pd.read_csv(input_file, sep=config["field_separator"], dtype=str, keep_default_na=False, quoting=3,
                         chunksize=batch_size, encoding="utf-8")
    rows = 0
    progress = tqdm(total=_rows(input_file), unit="rows", desc=set_color("Scoring", "pink"), disable=not show_progress)
    try:
        with atomic_open(output_file, "w") as out, progress:
            for chunk in chunks:
                if rows == 0:
                    scorer.check_columns(chunk.columns, input_file)
                    header = list(chunk.columns)
                    out.write("\t".join(header + ["score:float"]) + "\n")
                frame = chunk.copy()
                frame.columns = [c.split(":")[0] for c in chunk.columns]
                scores = scorer.score(frame)
                chunk = chunk.assign(**{"score:float": np.char.mod("%.9g", scores)})
                chunk.to_csv(out, sep="\t", header=False, index=False, quoting=3, lineterminator="\n")
                rows += len(chunk)
                progress.update(len(chunk))
            if rows == 0:
                raise PluginError(f"'{input_file}' has no rows to score.")
    except UnicodeDecodeError as error:
        raise PluginError(f"'{input_file}' is not UTF-8 text ({error}): save it as UTF-8.") from None
    except pd.errors.ParserError as error:
        raise PluginError(f"'{input_file}' is not a tab-separated file of the dataset's columns: {error}") from None
    except pd.errors.EmptyDataError:
        raise PluginError(f"'{input_file}' is empty: it needs a header of the dataset's columns and rows.") from None
    summary = {"rows": rows, "output": os.path.abspath(output_file),
               "unknown": {f: n for f, n in scorer.unknown.items() if n},
               "histories_cut": scorer.truncated}
    getLogger().info(set_color("scored", "blue") + f": {summary}")
    return summary


def describe(summary):
    """The summary as one line for a person."""
    unknown = ", ".join(f"{field} {n}" for field, n in summary["unknown"].items()) or "none"
    return (f"scored {summary['rows']} rows -> {summary['output']}; unknown tokens (scored as RecBole's padding "
            f"id 0): {unknown}; histories cut to the model's length: {summary['histories_cut']}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score a file of rows with a trained run.")
    parser.add_argument("--checkpoint", required=True, help="saved/<MODEL>-<run id>.pth of a trained run")
    parser.add_argument("--input", required=True, help="rows in the dataset's .inter columns (tab separated, header)")
    parser.add_argument("--output", required=True, help="the input's rows with a score:float column appended")
    parser.add_argument("--batch_size", type=int, default=None, help="rows per batch (default: eval_batch_size)")
    parser.add_argument("--data_path", default=None, help="the datasets' folder, if it moved since training")
    parser.add_argument("--show_progress", default="True", help="progress bar (True/False)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = {"state": "WARNING"}
    if args.data_path:
        overrides["data_path"] = args.data_path
    try:
        summary = predict_file(args.checkpoint, args.input, args.output, args.batch_size, overrides,
                               show_progress=args.show_progress.lower() != "false")
    except PluginError as error:  # known and fixable: its message alone; anything else keeps its traceback
        sys.exit(f"error: {error}")
    print(describe(summary))


if __name__ == "__main__":
    main()
