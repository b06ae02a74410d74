"""New items from their text alone: score them with a trained CELA run, no retraining.

A trained CELA run is its RecBole checkpoint (``saved/CELA-<time>.pth``, which holds the fused
model and its item text table) plus the aligned encoder folder of its stage cache (recorded in
the checkpoint's ``plugin`` record as ``encoder``, beside the data's fingerprint). New items are
encoded once by that encoder, with the run's text settings and pooling, and appended to the model's text table in memory. Their item
id is unknown and takes RecBole's default for an unknown token, the padding id 0; the item
features they come with (e.g. amazon's ``attributes``: brand and category tokens) are their own,
a token the run never saw becoming padding, counted (see ``docs/new_items.md``). Nothing is
written: ``saved/`` is only read.

An ID model without text (e.g. a DIN run the caller loaded) scores new items the same way from
their features alone: ``NewItemScorer(model, config, dataset)`` with no encoder.

Python::

    from recbole_cela.new_items import NewItemScorer
    scorer = NewItemScorer.load("saved/CELA-Nov-25-2026_21-50-17.pth")
    scorer.add_items({"m-2001": "movie title: Some New Film; class: Drama; release year: 2001"},
                     features={"m-2001": {"class": "Drama", "release_year": "2001"}})
    scorer.score(["50", "172"], ["m-2001", "181"])           # click probabilities
    scorer.rank(["50", "172"], ["m-2001", "181", "1"], k=2)  # [(item, probability), ...]

Command line::

    python -m recbole_cela.new_items --checkpoint=saved/CELA-....pth --items=new.tsv \\
        --pairs=pairs.tsv [--output=scores.tsv]
    python -m recbole_cela.new_items --checkpoint=... --items=new.tsv --history="50 172" \\
        [--candidates="m-2001 181"] [--k=10] [--user=1]

``--items``: ``item_id<TAB>text`` lines (an optional ``item_id<TAB>text`` header, which may name
item feature columns after the text: ``item_id<TAB>text<TAB>attributes``), or a file in the
dataset's ``.item`` atomic format (header ``item_id:token<TAB>movie_title:token_seq...``), whose
text is assembled like the dataset's (``text_fields``/``text_template``). Columns that are item
features of the run give the new items those features; other columns are not read as features.
``--pairs``: ``user_id<TAB>history<TAB>item_id`` lines, the history as space-separated item ids
(oldest first, empty allowed); the output repeats each line with its probability appended.
Both are UTF-8 text: a line that is not stops the command, naming the file and line, as does an
empty text, an unknown item or (``--unknown_users=error``) an unknown user. A user the dataset does
not have is scored as an unknown user (RecBole's padding id, no user features): the pairs that
name one are counted and warned about.
"""

import argparse
import copy
import logging
import os
import sys

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import FeatureType

from recbole_cela.fileio import atomic_write, read_atomic_file, undecodable, unwritable
from recbole_cela.loading import load_data_and_model, read_run
from recbole_cela.utils import PluginError


class NewItemError(PluginError):
    """Input the new-items path cannot use, with what to do instead. Nothing was written."""


def _load_checkpoint(path):
    try:
        checkpoint = read_run(path)
    except PluginError as error:
        raise NewItemError(str(error)) from None
    config = checkpoint["config"]
    if config.get("model") != "CELA":
        raise NewItemError(f"'{path}' is a {config.get('model')} run: new items need a CELA run (model CELA).")
    plugin = checkpoint["plugin"]
    if not config.get("use_text") or not plugin.get("encoder"):
        raise NewItemError(f"'{path}' is a CELA run without text (use_text: False): it has no text table "
                           "to add new items to (train one with use_text: True).")
    return checkpoint


def _encoder_folder(checkpoint_path, recorded, dataset):
    """The aligned encoder folder as recorded; else the same folder name in the default cache
    layout beside the checkpoint (a saved/ folder that was moved)."""
    candidates = [recorded, os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "cela",
                                         dataset, os.path.basename(recorded))]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    raise NewItemError(
        f"The run's text encoder folder '{recorded}' is missing (stage cache deleted or moved): "
        "new items must be encoded by the encoder the run's table came from."
    )


class NewItemScorer:
    """A trained CELA run, ready to take new items and score (history, item) pairs; or, without
    ``encoder``, a trained ID model (DIN, DeepFM, ...) that knows new items by their features only."""

    def __init__(self, model, config, dataset, encoder=None, tokenizer=None):
        from recbole_cela.model.fusion import item_table_layer

        # A shallow copy: the new items' rows are appended to this scorer's item table only.
        self.model, self.config, self.dataset = model, config, copy.copy(dataset)
        self.encoder, self.tokenizer = encoder, tokenizer
        # The model that looks items up: CELA's fused backbone, or the ID model itself.
        self.id_model = getattr(model, "backbone", model)
        # DIN-family models (CELA's included) look added items up by their own ids; a plain
        # context-aware model reads their features from the interaction, with the padding id.
        self.keeps_ids = encoder is not None or item_table_layer(self.id_model) is not None
        self.n_known = dataset.item_num
        self.feature_fields = [f for f in dataset.item_feat.interaction if f != config["ITEM_ID_FIELD"]]
        self.unknown_tokens = {}  # {field: feature tokens of added items the run does not know}
        self.item_field = config["ITEM_ID_FIELD"]
        self.user_field = config["USER_ID_FIELD"]
        self.history_field = self.item_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.max_history = config["MAX_ITEM_LIST_LENGTH"]
        self.item_ids = dict(dataset.field2token_id[self.item_field])
        self.user_ids = dataset.field2token_id[self.user_field]
        self.added = {}

    # --------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, checkpoint_path, dataset=None, config_dict=None):
        """Load a CELA run. ``dataset``: the dataset you expect the run to be about (checked);
        ``config_dict``: overrides, e.g. ``{"data_path": ...}`` when the data moved."""
        from recbole_cela.text.encoder import load_encoder, load_tokenizer

        checkpoint = _load_checkpoint(checkpoint_path)
        saved = checkpoint["config"]
        if dataset is not None and dataset != saved["dataset"]:
            raise NewItemError(
                f"'{checkpoint_path}' is a run on dataset '{saved['dataset']}', not '{dataset}'."
            )
        # The loader every trained run goes through (recbole_cela.loading): the model with its
        # text table, built on the training split as the runner builds it.
        overrides = {"state": "ERROR", "show_progress": False, **(config_dict or {})}
        try:
            config, model, _, train_data, _, _ = load_data_and_model(checkpoint_path, overrides)
        except PluginError as error:
            raise NewItemError(str(error)) from None
        data = train_data.dataset
        model.eval()
        encoder_path = _encoder_folder(checkpoint_path, checkpoint["plugin"]["encoder"], saved["dataset"])
        encoder = load_encoder(encoder_path).eval()
        return cls(model, config, data, encoder, load_tokenizer(encoder_path, config["text_pad_token"]))

    # --------------------------------------------------------------------------- new items
    def add_items(self, items, features=None):
        """Add ``{item_id: text}`` (text None for an ID model), with their item features
        ``{item_id: {field: tokens}}`` (a space-separated string or a list; fields the run loads as
        item features, e.g. ``attributes``; a field or item left out is padding). Every text is
        encoded once. Returns the new internal ids."""
        from recbole_cela.model.fusion import add_item_rows, cat_item_rows

        if not items:
            raise NewItemError("No new items given.")
        features = features or {}
        tokens, texts = [], []
        for token, text in items.items():
            token = str(token).strip()
            if not token:
                raise NewItemError("A new item has an empty item id.")
            if token in self.item_ids:
                where = "added earlier" if token in self.added else f"in dataset '{self.config['dataset']}'"
                raise NewItemError(f"Item id '{token}' already exists ({where}): new items need new ids.")
            if token in tokens:
                raise NewItemError(f"Item id '{token}' is given twice.")
            if self.encoder is not None and (text is None or not str(text).strip()):
                raise NewItemError(f"New item '{token}' has an empty text: its text is all CELA knows of it.")
            tokens.append(token)
            texts.append(None if text is None else str(text).strip())
        stray = sorted(set(map(str, features)) - set(tokens))
        if stray:
            raise NewItemError(f"Features given for {stray}, which are not among the new items.")
        rows = self._feature_rows(tokens, {str(k): v for k, v in features.items()})
        start = len(self.dataset.item_feat)
        if self.encoder is not None:
            ids = self.model.add_text_items(self._encode(texts), rows).tolist()
        else:
            add_item_rows(self.id_model, rows)
            ids = list(range(start, start + len(tokens)))
        if ids != list(range(start, start + len(tokens))):  # the text table and the item table move together
            raise RuntimeError(f"new item ids {ids[:3]}... do not follow the item table ({start} rows)")
        self.dataset.item_feat = cat_item_rows(self.dataset.item_feat, rows)  # what join() reads
        for token, internal in zip(tokens, ids):
            self.item_ids[token] = internal
            self.added[token] = internal
        return ids

    def _encode(self, texts):
        from recbole_cela.text.encoder import text_precision
        from recbole_cela.text.items import TokenizedItems, encode_items

        tokenized = TokenizedItems(self.tokenizer, texts, self.config["max_text_length"])
        if tokenized.n_cut:
            logging.getLogger(__name__).warning(
                f"{tokenized.n_cut} of {len(texts)} new item texts cut at max_text_length={tokenized.max_length}")
        # The precision the run's table was encoded in, so old and new rows are alike.
        return encode_items(self.encoder, tokenized, self.config["text_pooling"], self.config["eval_text_batch_size"],
                            "cpu", precision=text_precision(self.config["text_amp"], "cpu"))

    def _feature_rows(self, tokens, features):
        """The new items' rows of the item table: the padding item id, and each item feature
        given (its tokens in the run's vocabulary; unknown ones are padding, counted)."""
        rows = self.dataset.item_feat[torch.zeros(len(tokens), dtype=torch.long)]  # the padding item's row
        given = sorted({str(f) for item in features.values() for f in (item or {})})
        unknown_fields = [f for f in given if f not in self.feature_fields]
        if unknown_fields:
            raise NewItemError(f"{unknown_fields} are not item features of this run: its item features are "
                               f"{self.feature_fields or 'none'} (the dataset config's load_col).")
        separator = self.config["seq_separator"] or " "
        for field in given:
            kind = self.dataset.field2type[field]
            if kind not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
                raise NewItemError(f"Item feature '{field}' is numeric ({kind.value}): new items take only "
                                   "token features; leave it out (it is then the padding value).")
            vocabulary = self.dataset.field2token_id[field]
            ids = []
            for token in tokens:
                value = (features.get(token) or {}).get(field)
                if value is None:
                    value = []
                elif isinstance(value, str):
                    value = [value.strip()] if kind == FeatureType.TOKEN else value.split(separator)
                values = [str(v).strip() for v in value if str(v).strip()]
                if kind == FeatureType.TOKEN and len(values) > 1:
                    raise NewItemError(f"New item '{token}': '{field}' is a single-token feature, got {values}.")
                known = [vocabulary[v] for v in values if v in vocabulary]
                if len(known) < len(values):
                    self.unknown_tokens[field] = self.unknown_tokens.get(field, 0) + len(values) - len(known)
                ids.append(known)
            if kind == FeatureType.TOKEN:
                rows.interaction[field] = torch.tensor([i[0] if i else 0 for i in ids], dtype=torch.long)
            else:
                width = max([rows[field].shape[1]] + [len(i) for i in ids])
                column = torch.zeros(len(tokens), width, dtype=torch.long)
                for row, i in enumerate(ids):
                    column[row, : len(i)] = torch.tensor(i, dtype=torch.long)
                rows.interaction[field] = column
        if self.unknown_tokens:
            logging.getLogger(__name__).warning(
                f"feature tokens of new items this run does not know, taken as padding: {self.unknown_tokens}")
        return rows

    # --------------------------------------------------------------------------- scoring
    def unknown_users(self, users):
        """The users of ``users`` (ids or None) the dataset does not have, each once, in order:
        scored as an unknown user (the padding id 0, no user features)."""
        return list(dict.fromkeys(str(u) for u in users if u is not None and str(u) not in self.user_ids))

    def _item(self, token):
        try:
            return self.item_ids[str(token)]
        except KeyError:
            raise NewItemError(f"Unknown item '{token}': neither in the dataset nor added.") from None

    def interaction(self, users, histories, items):
        """The RecBole ``Interaction`` the model scores for these (user or None, history item ids,
        item id) triples, with the user's and the items' features joined (an added item's own
        row). Added items keep their own ids where the model looks them up itself (CELA, DIN);
        for a plain context-aware model they are the padding id."""
        n = len(items)
        length = self.max_history
        history = torch.zeros(n, length, dtype=torch.long)
        lengths = torch.zeros(n, dtype=torch.long)
        for row, seq in enumerate(histories):
            seq = [self._item(t) for t in seq][-length:]
            history[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            lengths[row] = len(seq)
        user = torch.tensor([self.user_ids.get(str(u), 0) if u is not None else 0 for u in users])
        item = torch.tensor([self._item(t) for t in items], dtype=torch.long)
        fields = {self.user_field: user, self.item_field: item}
        if self.history_field in self.dataset.field2type:
            fields[self.history_field] = history if self.keeps_ids else history.masked_fill(history >= self.n_known, 0)
        if self.length_field in self.dataset.field2type:
            fields[self.length_field] = lengths
        # User and item features; an added item's row has the padding item id, which a plain
        # context-aware model reads as it is.
        interaction = self.dataset.join(Interaction(fields))
        if self.keeps_ids:
            interaction.interaction[self.item_field] = item
        return interaction

    @torch.no_grad()
    def score_pairs(self, pairs, batch_size=4096):
        """Click probabilities of ``[(user or None, history item ids, item id), ...]``."""
        out = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            interaction = self.interaction([p[0] for p in chunk], [p[1] for p in chunk], [p[2] for p in chunk])
            out.append(self.model.predict(interaction).float())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def score(self, history, items, user=None):
        """Click probability of each of ``items`` after ``history`` (item ids, oldest first)."""
        return self.score_pairs([(user, list(history), item) for item in items])

    def rank(self, history, candidates=None, k=10, user=None):
        """The ``k`` best of ``candidates`` (default: the added items) as (item, probability)."""
        candidates = list(self.added) if candidates is None else list(candidates)
        scores = self.score(history, candidates, user)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(candidates[i], float(scores[i])) for i in order]


# ------------------------------------------------------------------------------- files / CLI
def _text_lines(path, what):
    """The lines of a UTF-8 text file (line ends removed), numbered from 1.

    A line that is not UTF-8 stops with its file and line. Not decoded with replacement
    characters: every line here is an item or a pair the user asked to score, and this command
    refuses any line it cannot read as given (there is no share of bad lines it tolerates, unlike
    the converter) rather than score a text or an id the file does not hold.
    """
    if not os.path.isfile(path):
        raise NewItemError(f"No {what} file '{path}'.")
    lines = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            where = undecodable(line)
            if where:
                raise NewItemError(f"{path}:{number}: not UTF-8 text ({where}): save the {what} file as UTF-8.")
            lines.append(line.rstrip("\n"))
    return lines


def read_items_file(path, config=None):
    """``{item_id: text}`` from ``item_id<TAB>text`` lines or a dataset-format ``.item`` file."""
    return read_items(path, config)[0]


def read_items(path, config=None):
    """(``{item_id: text}``, ``{item_id: {column: value}}``) of an items file: the text, and the
    other columns (a dataset-format ``.item`` file's, or those an ``item_id<TAB>text<TAB>...``
    header names after the text), which may be item features of the run."""
    lines = _text_lines(path, "items")
    first = (lines[0] if lines else "").split("\t")
    if all(":" in column for column in first):  # an atomic .item file
        from recbole_cela.text.items import assemble

        frame = read_atomic_file(path)
        item_field = config["ITEM_ID_FIELD"] if config else "item_id"
        fields = list(config["text_fields"]) if config else []
        missing = [f for f in fields + [item_field] if f not in frame.columns]
        if missing:
            raise NewItemError(f"'{path}' lacks the columns {missing} (the run reads text from {fields}).")
        texts = assemble(frame, fields, config["text_template"], "")
        ids = frame[item_field].str.strip()
        for row, (token, text) in enumerate(zip(ids, texts)):
            if not str(text).strip():
                raise NewItemError(f"{path}:{row + 2}: new item '{token}' has an empty text (fields {fields}): "
                                   "its text is all CELA knows of it.")
        others = [c for c in frame.columns if c != item_field]
        features = {i: {c: v for c, v in zip(others, row) if isinstance(v, str) and v.strip()}
                    for i, row in zip(ids, frame[others].itertuples(index=False))}
        return dict(zip(ids, texts)), features
    items, features, columns = {}, {}, []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == 1 and line.lower().startswith("item_id\t"):
            columns = [c.strip() for c in line.split("\t")[2:]]
            continue
        if columns:
            parts = line.split("\t")
            if len(parts) > 2 + len(columns):
                raise NewItemError(f"{path}:{number}: {len(parts)} columns, the header names {2 + len(columns)}.")
            token, text, sep = parts[0], parts[1] if len(parts) > 1 else "", len(parts) > 1
            values = dict(zip(columns, parts[2:]))
        else:
            token, sep, text = line.partition("\t")
            values = {}
        if not sep:
            raise NewItemError(f"{path}:{number}: expected 'item_id<TAB>text', got {line[:80]!r}.")
        if token.strip() in items:
            raise NewItemError(f"{path}:{number}: item id '{token.strip()}' is given twice.")
        if not text.strip():
            raise NewItemError(f"{path}:{number}: new item '{token.strip()}' has an empty text: its text is all "
                               "CELA knows of it.")
        items[token.strip()] = text
        features[token.strip()] = {c: v for c, v in values.items() if v.strip()}
    return items, features


def read_pairs_file(path, numbered=False):
    """``[(user or None, history item ids, item id), ...]`` of ``user_id<TAB>history<TAB>item_id``
    lines; ``numbered``: ``[(line number, pair), ...]``."""
    pairs = []
    for number, line in enumerate(_text_lines(path, "pairs"), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise NewItemError(f"{path}:{number}: expected 'user_id<TAB>history<TAB>item_id', got {line[:80]!r}.")
        user, history, item = parts
        pair = (user.strip() or None, history.split(), item.strip())
        pairs.append((number, pair) if numbered else pair)
    return pairs


def check_pairs(scorer, numbered, path, unknown_users="warn"):
    """Refuse a pair naming an unknown item, naming its file and line; count the pairs naming an
    unknown user and warn about them on stderr (``unknown_users="error"``: refuse the first)."""
    unknown = []
    for number, (user, history, item) in numbered:
        for token in [*history, item]:
            if token not in scorer.item_ids:
                raise NewItemError(f"{path}:{number}: unknown item '{token}': neither in dataset "
                                   f"'{scorer.config['dataset']}' nor in the new items.")
        if scorer.unknown_users([user]):
            unknown.append((number, user))
    if not unknown:
        return
    users = list(dict.fromkeys(user for _, user in unknown))
    where = f"{path}:{unknown[0][0]}"
    if unknown_users == "error":
        raise NewItemError(f"{where}: unknown user '{unknown[0][1]}' ({len(unknown)} pairs name {len(users)} users "
                           f"dataset '{scorer.config['dataset']}' does not have): correct or remove them, or "
                           "--unknown_users=warn scores them as an unknown user.")
    shown = ", ".join(f"'{u}'" for u in users[:5]) + (", ..." if len(users) > 5 else "")
    sys.stderr.write(f"warning: {len(unknown)} of {len(numbered)} pairs name {len(users)} users dataset "
                     f"'{scorer.config['dataset']}' does not have ({shown}; first at {where}): scored as an "
                     "unknown user (padding id, no user features); --unknown_users=error refuses them.\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Score new items of a trained CELA run from their text.")
    parser.add_argument("--checkpoint", required=True, help="saved/CELA-<time>.pth of a trained run")
    parser.add_argument("--items", required=True, help="item_id<TAB>text lines, or a dataset-format .item file")
    parser.add_argument("--dataset", default=None, help="check that the run is on this dataset")
    parser.add_argument("--pairs", default=None, help="user_id<TAB>history<TAB>item_id lines to score")
    parser.add_argument("--history", default=None, help="space-separated item ids: rank candidates after them")
    parser.add_argument("--candidates", default=None, help="space-separated item ids (default: the new items)")
    parser.add_argument("--user", default=None, help="user id for --history (optional)")
    parser.add_argument("--k", type=int, default=10, help="how many ranked items to print")
    parser.add_argument("--output", default=None, help="write here instead of stdout")
    parser.add_argument("--data_path", default=None, help="the datasets' folder, if it moved since training")
    parser.add_argument("--unknown_users", choices=["warn", "error"], default="warn",
                        help="a user the dataset does not have: scored as an unknown user, counted and warned "
                             "about (warn), or refused (error)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        # The input files are read before the run is loaded (the items file is checked only as
        # text: its dataset format needs the run's config), so a bad file stops at once.
        if args.output:  # before any work: a scoring run is not lost to an output it cannot write
            folder = os.path.dirname(args.output) or "."
            if os.path.isdir(args.output):
                raise NewItemError(f"--output '{args.output}' is a folder: name a file.")
            why = unwritable(folder)
            if why:
                raise NewItemError(f"--output '{args.output}' cannot be written: its folder '{folder}': {why}.")
        numbered = read_pairs_file(args.pairs, numbered=True) if args.pairs else None
        pairs = [pair for _, pair in numbered] if numbered is not None else None
        _text_lines(args.items, "items")
        overrides = {"data_path": args.data_path} if args.data_path else None
        scorer = NewItemScorer.load(args.checkpoint, dataset=args.dataset, config_dict=overrides)
        texts, columns = read_items(args.items, scorer.config)
        features = {i: {c: v for c, v in row.items() if c in scorer.feature_fields} for i, row in columns.items()}
        scorer.add_items(texts, features)
        if scorer.unknown_tokens:
            print(f"new items: feature tokens the run does not know, taken as padding: {scorer.unknown_tokens}",
                  file=sys.stderr)
        if pairs is not None:
            check_pairs(scorer, numbered, args.pairs, args.unknown_users)
        if args.history is not None and scorer.unknown_users([args.user]):
            what = f"--user '{args.user}': dataset '{scorer.config['dataset']}' does not have this user"
            if args.unknown_users == "error":
                raise NewItemError(f"{what}; without --user, or with --unknown_users=warn, the ranking is for "
                                   "an unknown user.")
            sys.stderr.write(f"warning: {what}: ranked for an unknown user (padding id, no user features); "
                             "--unknown_users=error refuses it.\n")
        lines = []
        if pairs is not None:
            for (user, history, item), p in zip(pairs, scorer.score_pairs(pairs)):
                lines.append(f"{user or ''}\t{' '.join(history)}\t{item}\t{p:.6f}")
        if args.history is not None:
            candidates = args.candidates.split() if args.candidates else None
            for item, p in scorer.rank(args.history.split(), candidates, args.k, args.user):
                lines.append(f"{item}\t{p:.6f}")
        if not lines:
            raise NewItemError("Nothing to do: give --pairs and/or --history.")
    except PluginError as error:  # known and fixable: its message alone; anything else keeps its traceback
        sys.exit(f"error: {error}")
    text = "\n".join(lines) + "\n"
    if args.output:
        atomic_write(args.output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
