"""Trainer of CELA's stage 2, item-level alignment (model: ``model/alignment.py``)."""

from recbole_cela.trainer.text_stage import TextStageTrainer


class AlignmentTrainer(TextStageTrainer):
    def __init__(self, config, model, checkpoint_file):
        super().__init__(config, model, "align", checkpoint_file)

    def diagnostics(self, valid_data):
        """Text->ID retrieval among the held-out items (recall@1/@10, mean rank, chance)."""
        self.model.eval()
        return self.model.retrieval(valid_data)
