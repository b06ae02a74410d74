"""CELA's trainer: runs (or reuses) the three stages, then trains the fused model.

Stage 1  DAPTrainer         encoder <- MLM (decoder: causal LM) + SimCSE   artifact: HF folder
Stage 2a RecBole Trainer    ID backbone on the CTR data (or                artifact: model.pth
                            ``backbone_checkpoint``: a trained run of it)
Stage 2b AlignmentTrainer   encoder aligned to the frozen backbone items   artifact: HF folder
Table    encode_items       one vector per item with the final encoder     artifact: item_text.pt
Stage 3  this Trainer       fresh backbone fused with the text table       RecBole checkpoint

Artifacts are cached under ``cela_dir`` (default ``<checkpoint_dir>/cela/<dataset>``) by the
staged-trainer base (:mod:`recbole_cela.trainer.stage`). Each stage's key hashes the settings it
reads: ``DAPTrainer.settings`` / ``AlignmentTrainer.settings`` / the table's, and for the ID
backbone every resolved setting that is not CELA's own (``backbone_settings``), so the backbone
is the model ``--model=<BACKBONE>`` trains with the same data, seed and settings. The ablation
switches ``dap``, ``align``, ``use_text`` and ``finetune_encoder`` only change which stages run.

Distributed (``--nproc``/``--world_size``, see docs/distributed.md): every stage runs in every
process. Stages 1 and 2b train under DistributedDataParallel on per-process parts of each item
batch, stage 2a and stage 3 are RecBole's distributed trainer (DistributedSampler), the table
is encoded in shards and gathered. Only rank 0 writes artifacts.
"""

import os
import time

import torch

from recbole_cela.checkpoints import backbone_state
from recbole_cela.data.loaders import ItemTextLoader
from recbole_cela.distributed import rank, world_size
from recbole_cela.fileio import atomic_torch_save, file_digest, fingerprint
from recbole_cela.model.alignment import ItemAlignment, alignment_target
from recbole_cela.model import build_model
from recbole_cela.model.backbones import get_backbone
from recbole_cela.model.dap import DomainAdaptivePretraining
from recbole_cela.model.fusion import item_id_vectors
from recbole_cela.text.encoder import (
    DEFAULT_POOLING,
    encoder_kind,
    encoder_training,
    load_encoder,
    load_language_model,
    load_tokenizer,
    make_trainable,
    padding_settings,
)
from recbole_cela.text.items import TokenizedItems, encode_items, item_text_settings, item_texts
from recbole_cela.trainer.alignment_trainer import AlignmentTrainer
from recbole_cela.trainer.dap_trainer import DAPTrainer
from recbole_cela.trainer.stage import StagedTrainer, backbone_config, backbone_settings, holdout_split, param_groups
from recbole_cela.trainer.text_stage import device_precision
from recbole_cela.utils import props_keys


class CELATrainer(StagedTrainer):
    artifact_dir_key = "cela_dir"
    artifact_folder = "cela"

    # ----------------------------------------------------------------------------- helpers
    def _text_setup(self, dataset):
        """Tokenise every item's text once; returns the text settings (the encoder included)."""
        text = item_text_settings(self.config)
        self.tokenizer = load_tokenizer(text["encoder"], self.config["text_pad_token"])
        kind, pooling, pad = encoder_kind(text["encoder"]), self.config["text_pooling"], self.config["text_pad_token"]
        self.logger.info(
            f"text encoder '{text['encoder']}': a {kind}, text_pooling '{pooling}' (default for {kind}s: "
            f"'{DEFAULT_POOLING[kind]}'), "
            + (f"padding with '{pad}' (the tokenizer has no pad token; text_pad_token)" if pad else "its own pad token")
        )
        texts = item_texts(self.config, dataset)
        start = time.time()
        self.tokenized = TokenizedItems(self.tokenizer, texts, text["max_text_length"])
        self.logger.info(
            f"tokenised {len(texts)} item texts once in {time.time() - start:.1f}s "
            f"(mean length {self.tokenized.lengths.float().mean():.1f} tokens, {self.tokenized.n_cut} cut at "
            f"max_text_length={self.tokenized.max_length}); e.g. {texts[1]!r}"
        )
        return text

    def _fit_items(self, trainer_class, model, settings, path):
        """Train a text stage on the items (split by ``valid_ratio``) and keep its best epoch."""
        train_items, valid_items = holdout_split(len(self.tokenized) - 1, settings["valid_ratio"], settings["seed"], first=1)
        shard = {"rank": rank(), "world_size": world_size()}
        batch = settings["batch_size"]
        train = ItemTextLoader(self.tokenized, train_items, batch, shuffle=True, seed=settings["seed"], **shard)
        valid = ItemTextLoader(self.tokenized, valid_items, batch, shuffle=False, **shard)
        trainer = trainer_class(self.config, model.to(self.device), settings, self.scratch_file(path))
        return self.fit_text_stage(trainer, train, valid)

    def _save_encoder(self, plain_encoder):
        def save(folder):  # a plain Hugging Face folder (LoRA adapters merged)
            plain_encoder().save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        return save

    # ----------------------------------------------------------------------------- stages
    def stage_dap(self, encoder_path, upstream):
        settings = DAPTrainer.settings(self.config)

        def build(path):
            encoder = load_language_model(encoder_path)  # with its masked-LM or causal-LM head
            plain_encoder = make_trainable(encoder, settings["training"])
            model = DomainAdaptivePretraining(encoder, self.tokenizer, settings["pooling"], settings["simcse_temperature"],
                                              settings["mlm_weight"], settings["mlm_probability"])
            return self._fit_items(DAPTrainer, model, settings, path), self._save_encoder(plain_encoder)

        return self.stage("dap", settings, build, upstream)

    def stage_backbone(self, train_data, valid_data):
        """The frozen ID backbone: RecBole's Trainer on the CTR data with exactly the settings of
        ``--model=<BACKBONE>`` (or the trained run given as ``backbone_checkpoint``)."""
        name = self.config["backbone"]
        config = backbone_config(self.config, name)

        def make():
            return build_model(get_backbone(name), config, train_data.dataset).to(self.device)

        if self.config["backbone_checkpoint"]:
            backbone = make()
            return backbone, self._given_backbone(backbone, name, train_data.dataset)

        def build(path):
            # Built after the stage's seeding, as the runner builds a model: the backbone trains
            # exactly as a run of --model=<BACKBONE> with the same seed does.
            return self.fit_id_model(make(), config, train_data, valid_data, path)

        path, run_id = self.stage("backbone", backbone_settings(self.config.final_config_dict, name), build)
        backbone = make()
        backbone.load_state_dict(torch.load(os.path.join(path, "model.pth"), map_location=self.device)["state_dict"])
        return backbone, run_id

    def _given_backbone(self, backbone, name, dataset):
        """Load ``backbone_checkpoint`` into ``backbone``; its run id is the file's content."""
        start = time.time()
        path = os.path.abspath(self.config["backbone_checkpoint"])
        state, saved = backbone_state(path, name, self.config, dataset)
        backbone.load_state_dict(state)
        ours, theirs = backbone_settings(self.config.final_config_dict, name), backbone_settings(saved, name)
        own = props_keys(self.config["model"])  # CELA's keys given to the backbone's run mean nothing there
        differ = sorted(k for k in set(ours) | set(theirs) if k not in own and ours.get(k) != theirs.get(k))
        if differ:
            self.logger.warning(f"backbone_checkpoint was trained with other values of {differ} than this run's backbone settings")
        self.report("backbone", {"time_s": round(time.time() - start, 2), "cached": True, "given": True,
                                 "artifact": path, "original_time_s": None, "settings_differ": differ})
        return "checkpoint-" + file_digest(path)

    def stage_align(self, encoder_path, upstream, backbone, backbone_id, dataset):
        settings = AlignmentTrainer.settings(self.config)

        def build(path):
            id_table = alignment_target(settings["target"], item_id_vectors(backbone, dataset).cpu(), dataset)
            encoder = load_encoder(encoder_path)
            plain_encoder = make_trainable(encoder, settings["training"])
            model = ItemAlignment(encoder, id_table, settings["pooling"], settings["temperature"], settings["proj_size"])
            return self._fit_items(AlignmentTrainer, model, settings, path), self._save_encoder(plain_encoder)

        return self.stage("align", settings, build, {**upstream, "backbone": backbone_id})

    def stage_table(self, encoder_path, upstream):
        settings = {"pooling": self.config["text_pooling"], **padding_settings(self.config),
                    "batch_size": self.config["eval_text_batch_size"], "precision": device_precision(self.config)}

        def build(path):
            # Every process encodes its shard of the items; all get the gathered table.
            start = time.time()
            encoder = load_encoder(encoder_path).to(self.device)
            table = encode_items(encoder, self.tokenized, settings["pooling"], settings["batch_size"], self.device,
                                 rank=rank(), world_size=world_size(), precision=settings["precision"])
            report = {"items": len(table), "texts_cut": self.tokenized.n_cut,
                      "max_text_length": self.tokenized.max_length,
                      "items_per_s": len(table) / max(time.time() - start, 1e-9)}
            return report, lambda folder: atomic_torch_save(table, os.path.join(folder, "item_text.pt"))

        path, _ = self.stage("table", settings, build, upstream)
        return torch.load(os.path.join(path, "item_text.pt"), map_location="cpu")

    def prepare_text(self, train_data, valid_data):
        """Stages 1 and 2 and the item table; returns (table, final encoder folder)."""
        dataset = train_data.dataset
        text = self._text_setup(dataset)
        encoder_path, upstream = text["encoder"], {"text": fingerprint(text), "encoder": "raw"}
        if self.config["dap"]:
            encoder_path, upstream["encoder"] = self.stage_dap(encoder_path, upstream)
        if self.config["align"]:
            backbone, backbone_id = self.stage_backbone(train_data, valid_data)
            encoder_path, upstream["encoder"] = self.stage_align(encoder_path, upstream, backbone, backbone_id, dataset)
        return self.stage_table(encoder_path, upstream), encoder_path

    # ----------------------------------------------------------------------------- stage 3
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.stage_loaders = (train_data, valid_data)
        if self.config["use_text"]:
            table, encoder_path = self.prepare_text(train_data, valid_data)
        # Whether stages ran or came from the cache changes how much randomness was drawn (and
        # how far their training advanced the train loader's shuffling): re-seed after the last
        # stage, so that what is built on them (e.g. an encoder's freshly initialised pooler)
        # and stage 3, hence the predictions, depend on the seed alone.
        self.seed_stage()
        if self.config["use_text"]:
            self.model.set_text_table(table)
            # In the checkpoint: what new items are encoded with (recbole_cela.new_items).
            self.checkpoint_record["encoder"] = encoder_path
            if self.config["finetune_encoder"]:
                self._attach_encoder(encoder_path)
        start = time.time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_report["fusion"] = {"time_s": round(time.time() - start, 2), "cached": False}
        return result

    def _attach_encoder(self, encoder_path):
        """End-to-end variant: the encoder trains inside the CTR loss, as stages 1-2 train it (top
        blocks or LoRA), at its own ``finetune_learning_rate``; the rest at RecBole's rate."""
        encoder = load_encoder(encoder_path)
        make_trainable(encoder, encoder_training(self.config))
        self.model.attach_encoder(encoder.to(self.device), self.tokenized)
        self.optimizer = self._build_optimizer(params=param_groups(self.model, encoder_lr=self.config["finetune_learning_rate"]))
        if not self.config["single_spec"]:  # new parameters: wrap the model again
            from recbole_cela.distributed import ddp_trainer_init

            ddp_trainer_init(self, self.config, self.model)

