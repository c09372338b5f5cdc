"""The search shared by the PatchSearch and PoisonCAM filter defenses.

cluster (``benchsuite.core.clustering``) -> locate a candidate trigger per image (a :class:`Locator`:
Grad-CAM or cluster activation masking) -> flip test and iterative search -> poison classifier.
"""

from benchsuite.eval.detection import box_iou
from benchsuite.poison_search.classifier import ClassifierConfig, ClassifierResult, train_poison_classifier
from benchsuite.poison_search.encoding import EncoderRunner
from benchsuite.poison_search.filter import FilterConfig, filter_config, run_filter
from benchsuite.poison_search.flip import FlipTest, flip_set
from benchsuite.poison_search.gradcam import GradCamLocator, kmeans_gradcam
from benchsuite.poison_search.locators import Located, Locator
from benchsuite.poison_search.masking import MaskingLocator
from benchsuite.poison_search.rsd import choose_window, relative_std
from benchsuite.poison_search.search import SearchConfig, SearchResult, iterative_search
from benchsuite.poison_search.windows import best_windows, crop_windows, paste_patches, window_side

__all__ = [
    "ClassifierConfig", "ClassifierResult", "EncoderRunner", "FilterConfig", "FlipTest", "GradCamLocator",
    "Located", "Locator", "MaskingLocator", "SearchConfig", "SearchResult", "best_windows", "box_iou",
    "choose_window", "crop_windows", "filter_config", "flip_set", "iterative_search", "kmeans_gradcam",
    "paste_patches", "relative_std", "run_filter", "train_poison_classifier", "window_side",
]
