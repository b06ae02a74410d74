"""FLIP's trainer: runs (or reuses) pretraining, then fine-tunes with the chosen strategy.

Stage pretrain   FLIPPretrainTrainer  backbone + encoder <- MLM / MTM / contrast   artifact: HF folder + backbone.pth
Stage id_warmup  RecBole Trainer      (joint only) the pretrained backbone on all   artifact: backbone.pth
                                      CTR interactions, before the text tower joins
Stage finetune   this Trainer         FLIP with flip_finetune = id | text | joint   RecBole checkpoint

Artifacts are cached by :class:`recbole_cela.text.cache.StageCache` under ``flip_dir`` (default
``<checkpoint_dir>/flip/<dataset>``), keyed by the data, the settings each stage reads and the run
id of the stage it builds on, exactly like CELA's stages.

On a CPU the text encoder cannot read every interaction: pretraining reads a fixed sample of
``flip_pretrain_samples`` training interactions, and the text strategies fine-tune on
``flip_finetune_samples`` interactions per epoch (a fresh sample each epoch). The ``id``
strategy (and ``id_warmup``) always train on every interaction. See props/FLIP.yaml.
"""

import os
import time

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_cela.compat import atomic_torch_save, plain
from recbole_cela.model.flip import TabularView, check_backbone
from recbole_cela.model.flip_pretrain import FLIPPretraining
from recbole_cela.text.cache import StageCache, data_fingerprint, fingerprint
from recbole_cela.text.encoder import freeze_below, load_encoder, load_tokenizer, resolve_encoder_path
from recbole_cela.text.prompts import SampledLoader, build_prompts
from recbole_cela.trainer.text_stage import TextStageTrainer
from recbole_cela.utils import init_seed, recbole_props_file

PROMPT_KEYS = ["text_fields", "text_template", "text_fallback", "flip_user_fields", "flip_history_field",
               "flip_max_prompt_length"]
PRETRAIN_KEYS = ["flip_mlm", "flip_mtm", "flip_icl", "flip_pretrain_samples", "flip_pretrain_valid_ratio",
                 "flip_pretrain_epochs", "flip_pretrain_learning_rate", "flip_pretrain_head_learning_rate",
                 "flip_pretrain_stopping_step", "flip_pretrain_batch_size", "flip_mlm_probability",
                 "flip_mtm_probability", "flip_mtm_noise", "flip_icl_temperature", "flip_proj_size",
                 "text_pooling", "flip_trainable_layers"]
TRAIN_KEYS = ["learning_rate", "train_batch_size", "epochs", "stopping_step", "weight_decay", "load_col",
              "numerical_features", "embedding_size"]


def param_groups(model, encoder_lr):
    """Two optimizer groups: the encoder's trainable weights at ``encoder_lr``, the rest at the default."""
    encoder = getattr(model, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    rest = [p for p in model.parameters() if id(p) not in encoder_ids and p.requires_grad]
    groups = [{"params": rest}]
    trainable = [p for p in encoder.parameters() if p.requires_grad] if encoder is not None else []
    if trainable:
        groups.append({"params": trainable, "lr": encoder_lr})
    return groups


class FLIPPretrainTrainer(TextStageTrainer):
    """RecBole's epoch loop over prompt batches; validation = the held-out pretraining loss."""

    valid_in_train_mode = False

    def __init__(self, config, model, checkpoint_file):
        self._encoder_lr = config["flip_pretrain_learning_rate"]
        super().__init__(config, model, "flip_pretrain", checkpoint_file)

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs:  # heads and backbone learn at their own, larger rate
            kwargs["params"] = param_groups(self.model, self._encoder_lr)
            kwargs["learning_rate"] = self.config["flip_pretrain_head_learning_rate"]
        return super()._build_optimizer(**kwargs)

    def diagnostics(self, valid_data):
        state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same token and field masks before and after training
        try:
            out = self.model.diagnostics(valid_data, self.device)
            out["valid_loss"] = self.valid_loss(valid_data)
        finally:
            torch.random.set_rng_state(state)
        return out


class FLIPTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.cache = StageCache(config["flip_dir"] or os.path.join(config["checkpoint_dir"], "flip", config["dataset"]))
        self.stage_report = {}
        self.prompts = None
        if config["flip_finetune"] != "id":  # the encoder reads every sample: fewer, sampled epochs
            self.epochs = config["flip_text_epochs"]
            # Each validation scores every valid row with the encoder; 0 skips it (last epoch kept).
            self.eval_step = config["flip_text_eval_step"]

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs and getattr(self.model, "encoder", None) is not None:
            kwargs["params"] = param_groups(self.model, self.config["flip_encoder_learning_rate"])
        return super()._build_optimizer(**kwargs)

    # ----------------------------------------------------------------------------- helpers
    def _report(self, stage, start, cached, path, **info):
        entry = {"time_s": round(time.time() - start, 2), "cached": cached, "artifact": path, **info}
        self.stage_report[stage] = entry
        state = "reused" if cached else "done"
        self.logger.info(set_color(f"FLIP stage [{stage}] {state}", "green") + f": {plain(entry)}")

    def _keys(self, names):
        return {k: plain(self.config[k]) for k in names}

    def _backbone_keys(self):
        """Every key of the backbone's RecBole defaults file, with its value in this run."""
        import yaml

        name = self.config["flip_backbone"]
        path = recbole_props_file(name)
        keys = []
        if path:
            with open(path) as f:
                keys = sorted(yaml.safe_load(f) or {})
        return {"backbone": name, **self._keys(keys)}

    def _setup(self, dataset):
        self.encoder_path = resolve_encoder_path(self.config["text_encoder"])
        self.tokenizer = load_tokenizer(self.encoder_path)
        start = time.time()
        self.prompts = build_prompts(self.config, dataset, self.tokenizer)
        self.logger.info(f"FLIP prompts: users, items and titles tokenised once in {time.time() - start:.1f}s")
        self.base = {"data": data_fingerprint(self.config["data_path"], self.config["dataset"]),
                     "encoder": self.encoder_path, "prompt": self._keys(PROMPT_KEYS)}

    def _pretrain_loaders(self, train_data):
        n_rows = len(train_data.dataset)
        seed = self.config["seed"]
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(n_rows, generator=generator)
        n = self.config["flip_pretrain_samples"]
        n = n_rows if n is None or n < 0 else min(n, n_rows)
        rows = rows[:n]
        n_valid = max(1, int(round(self.config["flip_pretrain_valid_ratio"] * n)))
        batch = self.config["flip_pretrain_batch_size"]
        train = SampledLoader(train_data, rows[n_valid:], batch, shuffle=True, seed=seed, prompts=self.prompts)
        valid = SampledLoader(train_data, rows[:n_valid], batch, shuffle=False, prompts=self.prompts)
        return train, valid

    # ----------------------------------------------------------------------------- stages
    def stage_pretrain(self, train_data):
        key = fingerprint({**self.base, **self._backbone_keys(), **self._keys(PRETRAIN_KEYS + TRAIN_KEYS[-3:]),
                           "seed": self.config["seed"]})
        path = self.cache.path("pretrain", key)
        start = time.time()
        if self.cache.is_complete(path):
            self._report("pretrain", start, True, path, **self.cache.info(path).get("report", {}))
            return path, self.cache.run_id(path)
        dataset = train_data.dataset
        name = self.config["flip_backbone"]
        init_seed(self.config["seed"], self.config["reproducibility"])
        tabular = TabularView(check_backbone(name)(self.config, dataset), name)
        encoder = freeze_below(load_encoder(self.encoder_path, masked_lm=True), self.config["flip_trainable_layers"])
        model = FLIPPretraining(self.config, tabular, encoder, self.tokenizer, dataset).to(self.device)
        train_loader, valid_loader = self._pretrain_loaders(train_data)
        meta = {"stage": "pretrain", "key": key}
        with self.cache.writing(path, meta) as tmp:
            trainer = FLIPPretrainTrainer(self.config, model, os.path.join(tmp, "checkpoint.pth"))
            before = trainer.diagnostics(valid_loader)
            fit_start = time.time()
            trainer.fit(train_loader, valid_loader, saved=True, show_progress=self.config["show_progress"])
            fit_time = time.time() - fit_start
            trainer.load_best()
            after = trainer.diagnostics(valid_loader)
            os.remove(trainer.saved_model_file)
            model.encoder.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            atomic_torch_save(model.tabular.backbone.state_dict(), os.path.join(tmp, "backbone.pth"))
            epochs = len(trainer.train_loss_dict)
            meta["report"] = plain({
                "diagnostics_before": before,
                "diagnostics_after": after,
                "epochs": epochs,
                "samples": len(train_loader.pool),
                "items_per_s": len(train_loader.pool) * epochs / max(fit_time, 1e-9),  # samples/s
            })
        self._report("pretrain", start, False, path, **meta["report"])
        return path, self.cache.run_id(path)

    def stage_id_warmup(self, train_data, valid_data, backbone_state, upstream_id):
        """The (pretrained) backbone fine-tuned alone on every interaction, RecBole's Trainer."""
        key = fingerprint({"data": self.base["data"], "upstream": upstream_id, **self._backbone_keys(),
                           **self._keys(TRAIN_KEYS), "seed": self.config["seed"]})
        path = self.cache.path("id_warmup", key)
        start = time.time()
        if not self.cache.is_complete(path):
            init_seed(self.config["seed"], self.config["reproducibility"])
            backbone = check_backbone(self.config["flip_backbone"])(self.config, train_data.dataset).to(self.device)
            if backbone_state is not None:
                backbone.load_state_dict(backbone_state)
            with self.cache.writing(path, {"stage": "id_warmup", "key": key}) as tmp:
                trainer = Trainer(self.config, backbone)
                trainer.saved_model_file = os.path.join(tmp, "checkpoint.pth")
                _, result = trainer.fit(train_data, valid_data, saved=True, show_progress=self.config["show_progress"])
                state = torch.load(trainer.saved_model_file, map_location="cpu")["state_dict"]
                os.remove(trainer.saved_model_file)
                atomic_torch_save({"state_dict": state, "valid": plain(dict(result or {}))}, os.path.join(tmp, "model.pth"))
            cached = False
        else:
            cached = True
        saved = torch.load(os.path.join(path, "model.pth"), map_location="cpu")
        self._report("id_warmup", start, cached, path, valid=saved["valid"])
        return saved["state_dict"]

    # ----------------------------------------------------------------------------- fine-tuning
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        strategy = self.config["flip_finetune"]
        pretrain = self.config["flip_pretrain"]
        if strategy == "joint" and self.config["flip_freeze_backbone"] and not self.config["flip_id_warmup"]:
            raise ValueError("flip_freeze_backbone would freeze a backbone never trained on the CTR data: "
                             "enable flip_id_warmup or set flip_freeze_backbone: False.")
        needs_text = strategy != "id"
        if pretrain or needs_text:
            self._setup(train_data.dataset)
        backbone_state, encoder, upstream_id = None, None, "raw"
        if pretrain:
            path, upstream_id = self.stage_pretrain(train_data)
            backbone_state = torch.load(os.path.join(path, "backbone.pth"), map_location="cpu")
            if needs_text:
                encoder = load_encoder(path)
        if strategy == "joint" and self.config["flip_id_warmup"]:
            backbone_state = self.stage_id_warmup(train_data, valid_data, backbone_state, upstream_id)
        if backbone_state is not None:
            self.model.load_pretrained(backbone_state, encoder)
        if needs_text:
            self.model.set_prompts(self.prompts)
            n = self.config["flip_finetune_samples"]
            per_epoch = None if n is None or n < 0 else n
            train_data = SampledLoader(train_data, torch.arange(len(train_data.dataset)),
                                       self.config["flip_finetune_batch_size"], shuffle=True,
                                       seed=self.config["seed"], per_epoch=per_epoch)
        self.optimizer = self._build_optimizer()
        # Whether stages ran or came from the cache changes how much randomness was drawn:
        # re-seed so that fine-tuning (and so the predictions) depends on the seed alone.
        init_seed(self.config["seed"] + self.config["local_rank"], self.config["reproducibility"])
        start = time.time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        n_rows = len(train_data.pool) if isinstance(train_data, SampledLoader) else len(train_data.dataset)
        per_epoch = getattr(train_data, "per_epoch", None) or n_rows
        self.stage_report["finetune"] = {"time_s": round(time.time() - start, 2), "cached": False,
                                         "strategy": strategy, "samples_per_epoch": per_epoch,
                                         "epochs": len(self.train_loss_dict)}
        return result
