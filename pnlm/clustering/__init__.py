"""Clusters of windows (embed, k-means, assign) and the cluster histograms of domains.

The paper's methods condition on them: the most frequent cluster of a domain picks its expert, the
ratio of histograms weights importance sampling, and concentration (top share, entropy) says
whether specialization by cluster can help.
"""

from pnlm.backend_loader import native_bfloat16
from pnlm.clustering.clusters import Clusters, FitResult, assign_clusters, fit_clusters, load_clusters
from pnlm.clustering.embed import (DEFAULT_BATCH_SIZE, Embedder, ProgressFn, embed_windows,
                                resolve_embedder, window_texts)
from pnlm.clustering.histogram import (cluster_counts, cluster_histogram, entropy, histogram_report,
                                    importance_weights, top_share)
from pnlm.clustering.kmeans import kmeans, nearest_centroid

__all__ = [
    "Clusters", "FitResult", "assign_clusters", "fit_clusters", "load_clusters",
    "DEFAULT_BATCH_SIZE", "Embedder", "ProgressFn", "embed_windows", "native_bfloat16", "resolve_embedder",
    "window_texts", "cluster_counts", "cluster_histogram", "entropy", "histogram_report", "importance_weights",
    "top_share", "kmeans", "nearest_centroid",
]
