"""CELA's trainer: runs (or reuses) the three stages, then trains the fused model.

Stage 1  DAPTrainer         encoder <- MLM + SimCSE on item texts          artifact: HF folder
Stage 2a RecBole Trainer    ID backbone on the CTR data                    artifact: model.pth
Stage 2b AlignmentTrainer   encoder aligned to the frozen backbone items   artifact: HF folder
Table    encode_items       one vector per item with the final encoder     artifact: item_text.pt
Stage 3  this Trainer       fresh backbone fused with the text table       RecBole checkpoint

Each artifact is cached by :class:`recbole_cela.text.cache.StageCache` under
``cela_dir`` (default ``<checkpoint_dir>/cela/<dataset>``). The ablation switches ``dap``,
``align``, ``use_text`` and ``finetune_encoder`` only change which stages run.

Distributed (``--nproc``/``--world_size``, see docs/distributed.md): every stage runs in every
process. Stages 1 and 2b train under DistributedDataParallel on per-process parts of each item
batch, stage 2a and stage 3 are RecBole's distributed trainer (DistributedSampler), the table
is encoded in shards and gathered. Only rank 0 writes artifacts (atomically, as in a single
process); the others wait on a barrier and read them. Whether a stage is cached is rank 0's
decision, broadcast to all.
"""

import os
import shutil
import time
import uuid

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_cela.compat import atomic_torch_save, plain
from recbole_cela.distributed import barrier, broadcast_object, is_main, rank, world_size
from recbole_cela.model.alignment import ItemAlignment, alignment_target
from recbole_cela.model.dap import DomainAdaptivePretraining
from recbole_cela.model.fusion import item_id_vectors
from recbole_cela.text.cache import StageCache, data_fingerprint, fingerprint
from recbole_cela.text.encoder import freeze_below, load_encoder, load_tokenizer, resolve_encoder_path
from recbole_cela.text.items import ItemTextLoader, TokenizedItems, encode_items, item_texts
from recbole_cela.trainer.alignment_trainer import AlignmentTrainer
from recbole_cela.trainer.dap_trainer import DAPTrainer
from recbole_cela.utils import get_model, init_seed

TEXT_KEYS = ["text_fields", "text_template", "text_fallback", "max_text_length", "text_trainable_layers"]
DAP_KEYS = ["dap_epochs", "dap_learning_rate", "dap_stopping_step", "dap_batch_size", "mlm_probability",
            "simcse_temperature", "mlm_weight", "text_pooling", "dap_valid_ratio"]
ALIGN_KEYS = ["align_epochs", "align_learning_rate", "align_head_learning_rate", "align_stopping_step", "align_batch_size",
              "align_temperature", "align_proj_size", "text_pooling", "align_valid_ratio", "align_target"]
BACKBONE_KEYS = ["embedding_size", "learning_rate", "train_batch_size", "epochs", "stopping_step",
                 "weight_decay", "load_col", "numerical_features"]


def split_items(n_items, valid_ratio, seed):
    """Items 1..n-1 (0 is padding) shuffled with ``seed`` into (train, valid)."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.randperm(n_items - 1, generator=generator) + 1
    n_valid = max(1, int(round(valid_ratio * len(items))))
    return items[n_valid:], items[:n_valid]


class CELATrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.cache = StageCache(config["cela_dir"] or os.path.join(config["checkpoint_dir"], "cela", config["dataset"]))
        self.stage_report = {}

    # ----------------------------------------------------------------------------- helpers
    def _report(self, stage, start, cached, path, **info):
        entry = {"time_s": round(time.time() - start, 2), "cached": cached, "artifact": path, **info}
        if cached:  # what making the artifact cost (None for artifacts older than this record)
            entry["original_time_s"] = self.cache.info(path).get("time_s")
        self.stage_report[stage] = entry
        state = "reused" if cached else "done"
        self.logger.info(set_color(f"CELA stage [{stage}] {state}", "green") + f": {plain(entry)}")

    def _is_complete(self, path):
        return broadcast_object(self.cache.is_complete(path))

    def _scratch_file(self, path):
        """A checkpoint file beside ``path`` that every process agrees on (rank 0 names it). Its
        folder starts with ``<stage>-<key>.tmp-``, so a killed run's one is cleared next time."""
        folder = broadcast_object(f"{path}.tmp-train-{uuid.uuid4().hex[:8]}")
        if is_main():
            os.makedirs(folder, exist_ok=True)
        barrier()
        return os.path.join(folder, "checkpoint.pth")

    def _keys(self, names):
        return {k: plain(self.config[k]) for k in names}

    def _text_setup(self, dataset):
        encoder_path = resolve_encoder_path(self.config["text_encoder"])
        self.tokenizer = load_tokenizer(encoder_path)
        texts = item_texts(self.config, dataset)
        start = time.time()
        self.tokenized = TokenizedItems(self.tokenizer, texts, self.config["max_text_length"])
        self.logger.info(
            f"tokenised {len(texts)} item texts once in {time.time() - start:.1f}s "
            f"(mean length {self.tokenized.lengths.float().mean():.1f} tokens); e.g. {texts[1]!r}"
        )
        base = {"data": data_fingerprint(self.config["data_path"], self.config["dataset"]),
                "encoder": encoder_path, "text": self._keys(TEXT_KEYS)}
        return encoder_path, base

    def _loaders(self, prefix, seed):
        train_items, valid_items = split_items(len(self.tokenized), self.config[f"{prefix}_valid_ratio"], seed)
        batch = self.config[f"{prefix}_batch_size"]
        shard = {"rank": rank(), "world_size": world_size()}
        return (ItemTextLoader(self.tokenized, train_items, batch, shuffle=True, seed=seed, **shard),
                ItemTextLoader(self.tokenized, valid_items, batch, shuffle=False, **shard))

    def _train_text_stage(self, stage, trainer_class, model, path, key, seed):
        """Fit a text stage (every process), keep its best epoch, save it atomically (rank 0)."""
        stage_start = time.time()
        train_loader, valid_loader = self._loaders(stage, seed)
        checkpoint = self._scratch_file(path)
        trainer = trainer_class(self.config, model, checkpoint)
        before = trainer.diagnostics(valid_loader)
        start = time.time()
        trainer.fit(train_loader, valid_loader, saved=True, show_progress=self.config["show_progress"])
        fit_time = time.time() - start
        barrier()  # rank 0 has written the best epoch
        trainer.load_best()
        after = trainer.diagnostics(valid_loader)
        barrier()  # every process has read it
        if is_main():
            epochs = len(trainer.train_loss_dict)
            meta = {"stage": stage, "key": key, "world_size": world_size(), "report": plain({
                "diagnostics_before": before,
                "diagnostics_after": after,
                "epochs": epochs,
                "items_per_s": len(train_loader.items) * epochs / max(fit_time, 1e-9),
            })}
            with self.cache.writing(path, meta, start=stage_start) as tmp:
                model.encoder.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(os.path.dirname(checkpoint), ignore_errors=True)
        barrier()
        return self.cache.info(path)["report"]

    # ----------------------------------------------------------------------------- stages
    def stage_dap(self, encoder_path, base):
        key = fingerprint({**base, **self._keys(DAP_KEYS), "seed": self.config["seed"]})
        path = self.cache.path("dap", key)
        start = time.time()
        if self._is_complete(path):
            self._report("dap", start, True, path, **self.cache.info(path).get("report", {}))
            return path, self.cache.run_id(path)
        encoder = freeze_below(load_encoder(encoder_path, masked_lm=True), self.config["text_trainable_layers"])
        model = DomainAdaptivePretraining(self.config, encoder, self.tokenizer)
        info = self._train_text_stage("dap", DAPTrainer, model.to(self.device), path, key, self.config["seed"])
        self._report("dap", start, False, path, **info)
        return path, self.cache.run_id(path)

    def stage_backbone(self, train_data, valid_data, base):
        """The ID backbone, trained with RecBole's own Trainer (or loaded from the cache)."""
        name = self.config["backbone"]
        key = fingerprint({"data": base["data"], "backbone": name, "seed": self.config["seed"],
                           **self._keys(BACKBONE_KEYS + self.config["backbone_keys"])})
        path = self.cache.path("backbone", key)
        start = time.time()
        backbone = get_model(name)(self.config, train_data.dataset).to(self.device)
        if not self._is_complete(path):
            trainer = Trainer(self.config, backbone)  # RecBole's (distributed) trainer
            trainer.saved_model_file = self._scratch_file(path)
            score, result = trainer.fit(train_data, valid_data, saved=True, show_progress=self.config["show_progress"])
            barrier()
            if is_main():
                info = {"stage": "backbone", "key": key, "backbone": name, "world_size": world_size()}
                state = torch.load(trainer.saved_model_file, map_location="cpu")["state_dict"]
                with self.cache.writing(path, info, start=start) as tmp:
                    atomic_torch_save({"state_dict": state, "valid": plain(dict(result or {}))}, os.path.join(tmp, "model.pth"))
                shutil.rmtree(os.path.dirname(trainer.saved_model_file), ignore_errors=True)
            barrier()
            cached = False
        else:
            cached = True
        saved = torch.load(os.path.join(path, "model.pth"), map_location=self.device)
        backbone.load_state_dict(saved["state_dict"])
        self._report("backbone", start, cached, path, valid=saved["valid"])
        return backbone, self.cache.run_id(path)

    def stage_align(self, encoder_path, upstream_id, backbone, backbone_id, dataset):
        keys = self._keys(ALIGN_KEYS)
        if keys["align_target"] == "item":  # the official target: keys of artifacts made before the option stay valid
            del keys["align_target"]
        key = fingerprint({"upstream": upstream_id, "backbone": backbone_id, **keys, "seed": self.config["seed"]})
        path = self.cache.path("align", key)
        start = time.time()
        if self._is_complete(path):
            self._report("align", start, True, path, **self.cache.info(path).get("report", {}))
            return path, self.cache.run_id(path)
        id_table = alignment_target(self.config["align_target"], item_id_vectors(backbone, dataset).cpu(), dataset)
        encoder = freeze_below(load_encoder(encoder_path), self.config["text_trainable_layers"])
        model = ItemAlignment(self.config, encoder, id_table).to(self.device)
        info = self._train_text_stage("align", AlignmentTrainer, model, path, key, self.config["seed"])
        self._report("align", start, False, path, **info)
        return path, self.cache.run_id(path)

    def stage_table(self, encoder_path, upstream_id):
        key = fingerprint({"upstream": upstream_id, "pooling": self.config["text_pooling"]})
        path = self.cache.path("table", key)
        start = time.time()
        if not self._is_complete(path):
            # Every process encodes its shard of the items; all get the gathered table.
            encoder = load_encoder(encoder_path).to(self.device)
            table = encode_items(encoder, self.tokenized, self.config["text_pooling"],
                                 self.config["eval_text_batch_size"], self.device,
                                 rank=rank(), world_size=world_size())
            if is_main():
                info = {"stage": "table", "key": key, "encoder": encoder_path, "world_size": world_size()}
                with self.cache.writing(path, info, start=start) as tmp:
                    atomic_torch_save(table, os.path.join(tmp, "item_text.pt"))
            barrier()
            cached = False
        else:
            cached = True
        table = torch.load(os.path.join(path, "item_text.pt"), map_location="cpu")
        n = len(self.tokenized)
        self._report("table", start, cached, path, items=n,
                     items_per_s=None if cached else n / max(time.time() - start, 1e-9))
        return table

    def prepare_text(self, train_data, valid_data):
        """Stages 1 and 2 and the item table; returns (table, final encoder folder)."""
        dataset = train_data.dataset
        encoder_path, base = self._text_setup(dataset)
        upstream_id = fingerprint(base)  # the raw encoder on this data
        if self.config["dap"]:
            encoder_path, upstream_id = self.stage_dap(encoder_path, base)
        if self.config["align"]:
            backbone, backbone_id = self.stage_backbone(train_data, valid_data, base)
            encoder_path, upstream_id = self.stage_align(encoder_path, upstream_id, backbone, backbone_id, dataset)
        return self.stage_table(encoder_path, upstream_id), encoder_path

    # ----------------------------------------------------------------------------- stage 3
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.config["use_text"]:
            table, encoder_path = self.prepare_text(train_data, valid_data)
            self.model.set_text_table(table)
            # Recorded in the checkpoint's config: what new items are encoded with, and the data
            # the run was trained on (recbole_cela.new_items checks both).
            self.config["cela_encoder"] = encoder_path
            self.config["cela_data"] = data_fingerprint(self.config["data_path"], self.config["dataset"])
            if self.config["finetune_encoder"]:
                # As in stages 1-2: only the top text_trainable_layers blocks train (-1: all).
                encoder = freeze_below(load_encoder(encoder_path), self.config["text_trainable_layers"])
                self.model.attach_encoder(encoder.to(self.device), self.tokenized)
                # The pretrained encoder at its own (small) learning rate, the rest at RecBole's.
                enc = [p for p in self.model.encoder.parameters() if p.requires_grad]
                ids = {id(p) for p in enc}
                rest = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
                self.optimizer = self._build_optimizer(
                    params=[{"params": rest}, {"params": enc, "lr": self.config["finetune_learning_rate"]}])
                if not self.config["single_spec"]:  # new parameters: wrap the model again
                    from recbole_cela.distributed import ddp_trainer_init

                    ddp_trainer_init(self, self.config, self.model)
        # Whether stages ran or came from the cache changes how much randomness was drawn:
        # re-seed so that stage 3 (and so the predictions) depends on the seed alone.
        init_seed(self.config["seed"] + self.config["local_rank"], self.config["reproducibility"])
        start = time.time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_report["fusion"] = {"time_s": round(time.time() - start, 2), "cached": False}
        return result
