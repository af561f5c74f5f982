"""Top-k accuracy (acc@1, acc@5, ...) as an `evaluate` metric, loaded by path so that it works offline:

    >>> import evaluate
    >>> metric = evaluate.load("metrics/topk_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], references=[1, 2], k=(1, 2))
    {'acc@1': 0.5, 'acc@2': 0.5}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose true class is among the k highest-scored classes. acc@1 is the usual
accuracy; INTR and the reference report acc@1 and acc@5. Ties are broken by class index (as `numpy.argsort`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): one score vector (logits or probabilities) per example, all of the same length
        (the number of classes).
    references (`list[int]`): the true class index of each example.
    k (`int` or `tuple[int, ...]`, defaults to `(1, 5)`): the k values to report; a k larger than the number of
        classes counts every example as correct.
Returns:
    `dict[str, float]`: `acc@k` for every requested k, in [0, 1].
"""

_CITATION = """
@inproceedings{paul2024simple,
  title={A Simple Interpretable Transformer for Fine-Grained Image Classification and Analysis},
  author={Paul, Dipanjyoti and Chowdhury, Arpita and Xiong, Xinqi and Chang, Feng-Ju and Carlyn, David and
          Stevens, Samuel and Provost, Kaiya and Karpatne, Anuj and Carstens, Bryan and Rubenstein, Daniel and
          Stewart, Charles and Berger-Wolf, Tanya and Su, Yu and Chao, Wei-Lun},
  booktitle={International Conference on Learning Representations},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        scores = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references)
        if scores.ndim != 2 or len(scores) != len(references):
            raise ValueError(f"Expected predictions [n, num_classes] for n references, got {scores.shape} for "
                             f"{references.shape}.")
        if len(references) == 0:
            raise ValueError("Top-k accuracy of zero examples is undefined.")
        # rank of the true class: how many classes score strictly higher, plus earlier classes with an equal score
        true_scores = scores[np.arange(len(scores)), references][:, None]
        columns = np.arange(scores.shape[1])[None]
        rank = (scores > true_scores).sum(1) + ((scores == true_scores) & (columns < references[:, None])).sum(1)
        ks = (k,) if isinstance(k, int) else tuple(k)
        return {f"acc@{value}": float((rank < value).mean()) for value in ks}
