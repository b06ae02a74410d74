"""FLIP's trainer: runs (or reuses) pretraining, then fine-tunes with the chosen strategy.

Stage pretrain   FLIPPretrainTrainer  backbone + encoder <- MLM / MTM / contrast   artifact: HF folder + backbone.pth
Stage id_warmup  RecBole Trainer      the (pretrained) backbone fine-tuned alone on   artifact: model.pth
                                      every CTR interaction: the ``id`` strategy's
                                      model, and ``joint``'s start
Stage finetune   this Trainer         FLIP with flip_finetune = text | joint        RecBole checkpoint

The ``id`` strategy *is* stage ``id_warmup``: its run and a joint run of the same seed share that
artifact, so the joint model starts from exactly the ID model it is compared with, and one of the
two runs pays for it. Pretraining is seeded by ``flip_pretrain_seed`` (not the run's seed) when
that is set, so runs of several seeds fine-tune one pretrained artifact, as they would a
published checkpoint.

Artifacts are cached under ``flip_dir`` (default ``<checkpoint_dir>/flip/<dataset>``) by the
staged-trainer base CELA's trainer uses too (:mod:`recbole_cela.trainer.stage`): keyed by the data,
the settings each stage reads and the run id of the stage it builds on.

On a CPU the text encoder cannot read every interaction: pretraining reads a fixed sample of
``flip_pretrain_samples`` training interactions, and the text strategies fine-tune on
``flip_finetune_samples`` interactions per epoch (a fresh sample each epoch). The ``id``
strategy (and ``id_warmup``) always train on every interaction. See props/FLIP.yaml. Those
sampled loaders are single-process, so FLIP refuses ``--nproc`` / ``--world_size`` (the runner
says so before any work).
"""

import os
import time

import torch

from recbole_cela.data.loaders import SampledLoader
from recbole_cela.fileio import atomic_torch_save
from recbole_cela.model.flip import TabularView, check_backbone
from recbole_cela.model.flip_pretrain import FLIPPretraining
from recbole_cela.text.encoder import freeze_below, load_encoder, load_tokenizer
from recbole_cela.text.prompts import build_prompts, prompt_settings
from recbole_cela.trainer.stage import StagedTrainer, backbone_config, backbone_settings, holdout_split, param_groups
from recbole_cela.trainer.text_stage import TextStageTrainer, device_precision
from recbole_cela.utils import PluginConfigError


def pretrain_seed(config):
    """The seed of FLIP's pretraining: ``flip_pretrain_seed``, or the run's ``seed`` when it is ~."""
    seed = config["flip_pretrain_seed"]
    return config["seed"] if seed is None else seed


class FLIPPretrainTrainer(TextStageTrainer):
    """RecBole's epoch loop over prompt batches; validation = the held-out pretraining loss."""

    stage = "flip_pretrain"

    reads = {**{key: key for key in ("flip_mlm", "flip_mtm", "flip_icl", "flip_mlm_probability", "flip_mtm_probability",
                                     "flip_mtm_noise", "flip_icl_temperature", "flip_proj_size", "text_pooling")},
             "samples": "flip_pretrain_samples", "valid_ratio": "flip_pretrain_valid_ratio",
             "epochs": "flip_pretrain_epochs", "learning_rate": "flip_pretrain_learning_rate",
             "head_learning_rate": "flip_pretrain_head_learning_rate", "stopping_step": "flip_pretrain_stopping_step",
             "batch_size": "flip_pretrain_batch_size", "trainable_layers": "flip_trainable_layers"}

    @staticmethod
    def derived(config):
        return {"precision": device_precision(config), "seed": pretrain_seed(config)}

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs:  # heads and backbone learn at their own, larger rate
            kwargs["params"] = param_groups(self.model, other_lr=self.settings["head_learning_rate"])
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


class FLIPTrainer(StagedTrainer):
    artifact_dir_key = "flip_dir"
    artifact_folder = "flip"

    def __init__(self, config, model):
        if not config["single_spec"]:
            raise PluginConfigError(type(model).not_distributed)
        super().__init__(config, model)
        self.prompts = None
        if config["flip_finetune"] != "id":  # the encoder reads every sample: fewer, sampled epochs
            self.epochs = config["flip_text_epochs"]
            # Each validation scores every valid row with the encoder; 0 skips it (last epoch kept).
            self.eval_step = config["flip_text_eval_step"]

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs and getattr(self.model, "encoder", None) is not None:
            kwargs["params"] = param_groups(self.model, encoder_lr=self.config["flip_encoder_learning_rate"])
        return super()._build_optimizer(**kwargs)

    def _setup(self, dataset):
        self.prompt_settings = prompt_settings(self.config)
        self.tokenizer = load_tokenizer(self.prompt_settings["encoder"])
        start = time.time()
        self.prompts = build_prompts(self.config, dataset, self.tokenizer)
        self.logger.info(f"FLIP prompts: users, items and titles tokenised once in {time.time() - start:.1f}s")

    def _pretrain_loaders(self, train_data, settings):
        """Loaders of the seeded pretraining sample of training rows, split for early stopping."""
        n_rows, n, seed = len(train_data.dataset), settings["samples"], settings["seed"]
        n = n_rows if n is None or n < 0 else min(n, n_rows)
        train_rows, valid_rows = holdout_split(n_rows, settings["valid_ratio"], seed, take=n)
        batch, lengths = settings["batch_size"], self.prompts.lengths
        train = SampledLoader(train_data, train_rows, batch, shuffle=True, seed=seed, prompts=self.prompts, lengths=lengths)
        valid = SampledLoader(train_data, valid_rows, batch, shuffle=False, prompts=self.prompts, lengths=lengths)
        return train, valid

    # ----------------------------------------------------------------------------- stages
    def stage_pretrain(self, train_data):
        name = self.config["flip_backbone"]
        own = FLIPPretrainTrainer.settings(self.config)
        # The backbone's settings without the run's seed: the pretraining seed is in ``own``.
        backbone = {k: v for k, v in backbone_settings(self.config.final_config_dict, name).items() if k != "seed"}
        settings = {"pretrain": own, "prompts": self.prompt_settings, "backbone": backbone}

        def build(path):
            dataset = train_data.dataset
            tabular = TabularView(check_backbone(name)(self.config, dataset), name)
            encoder = freeze_below(load_encoder(self.prompt_settings["encoder"], masked_lm=True), own["trainable_layers"])
            model = FLIPPretraining(own, tabular, encoder, self.tokenizer, dataset).to(self.device)
            train_loader, valid_loader = self._pretrain_loaders(train_data, own)
            trainer = FLIPPretrainTrainer(self.config, model, own, self.scratch_file(path))
            report = {**self.fit_text_stage(trainer, train_loader, valid_loader), "samples": train_loader.n_samples}

            def save(folder):
                model.encoder.save_pretrained(folder)
                self.tokenizer.save_pretrained(folder)
                atomic_torch_save(model.tabular.backbone.state_dict(), os.path.join(folder, "backbone.pth"))

            return report, save

        return self.stage("pretrain", settings, build, seed=own["seed"])

    def stage_id_warmup(self, train_data, valid_data, backbone_state, upstream_id):
        """The (pretrained) backbone fine-tuned alone on every interaction, RecBole's Trainer:
        ``(state dict, its stage report)``."""
        name = self.config["flip_backbone"]

        def build(path):
            backbone = check_backbone(name)(self.config, train_data.dataset).to(self.device)
            if backbone_state is not None:
                backbone.load_state_dict(backbone_state)
            return self.fit_id_model(backbone, backbone_config(self.config, name), train_data, valid_data, path)

        path, _ = self.stage("id_warmup", backbone_settings(self.config.final_config_dict, name), build, {"pretrain": upstream_id})
        return torch.load(os.path.join(path, "model.pth"), map_location="cpu")["state_dict"]

    def id_model_result(self, backbone_state, saved=True):
        """The ``id`` strategy: the model is stage ``id_warmup``'s backbone. Saved as this run's
        RecBole checkpoint (what the runner tests), with that stage's best valid result."""
        self.model.load_pretrained(backbone_state)
        valid = dict(self.stage_report["id_warmup"].get("valid") or {})
        self.best_valid_result = valid
        self.best_valid_score = valid.get(self.valid_metric.lower(), valid.get(self.valid_metric))
        self.optimizer = self._build_optimizer()
        if saved:
            self._save_checkpoint(0, verbose=False)
        self.stage_report["finetune"] = {"time_s": 0.0, "cached": False, "strategy": "id",
                                         "model": "stage id_warmup's backbone"}
        return self.best_valid_score, self.best_valid_result

    # ----------------------------------------------------------------------------- fine-tuning
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.stage_loaders = (train_data, valid_data)
        strategy = self.config["flip_finetune"]
        pretrain = self.config["flip_pretrain"]
        if strategy == "joint" and self.config["flip_freeze_backbone"] and not self.config["flip_id_warmup"]:
            raise PluginConfigError("flip_freeze_backbone would freeze a backbone never trained on the CTR data: "
                                    "enable flip_id_warmup or set flip_freeze_backbone: False.")
        if pretrain or strategy != "id":
            self._setup(train_data.dataset)
        backbone_state, path, upstream_id = None, None, "raw"
        if pretrain:
            path, upstream_id = self.stage_pretrain(train_data)
            backbone_state = torch.load(os.path.join(path, "backbone.pth"), map_location="cpu")
        if strategy == "id" or (strategy == "joint" and self.config["flip_id_warmup"]):
            backbone_state = self.stage_id_warmup(train_data, valid_data, backbone_state, upstream_id)
        if strategy == "id":
            return self.id_model_result(backbone_state, saved)
        # Whether stages ran or came from the cache changes how much randomness was drawn (and
        # how far the ID warm-up advanced the train loader's shuffling): re-seed after the last
        # stage, so that what is built on them (e.g. an encoder's freshly initialised pooler)
        # and fine-tuning, hence the predictions, depend on the seed alone.
        self.seed_stage()
        encoder = load_encoder(path) if pretrain else None
        if backbone_state is not None:
            self.model.load_pretrained(backbone_state, encoder)
        self.model.set_prompts(self.prompts)
        n = self.config["flip_finetune_samples"]
        train_data = SampledLoader(train_data, torch.arange(len(train_data.dataset)),
                                   self.config["flip_finetune_batch_size"], shuffle=True, seed=self.config["seed"],
                                   per_epoch=None if n is None or n < 0 else n, lengths=self.prompts.lengths)
        self.optimizer = self._build_optimizer()
        start = time.time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        elapsed = time.time() - start
        per_epoch = train_data.per_epoch or len(train_data.pool)
        epochs = len(self.train_loss_dict)
        self.stage_report["finetune"] = {"time_s": round(elapsed, 2), "cached": False, "strategy": strategy,
                                         "samples_per_epoch": per_epoch, "epochs": epochs,
                                         "items_per_s": round(per_epoch * epochs / max(elapsed, 1e-9), 2)}
        if strategy == "joint":  # how much the text logit counts after the last epoch
            w_id, w_text = (float(w) for w in self.model.mix.detach().cpu())
            self.stage_report["finetune"].update(w_id=round(w_id, 4), w_text=round(w_text, 4))
        return result

