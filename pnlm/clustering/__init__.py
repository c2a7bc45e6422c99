"""Clusters of windows and the cluster histograms of domains: the embedder (embedder.py), what it reads of
a window (window_features.py), embedding on any device, sharded over a torchrun job's ranks and resumable
(embed.py, embedding_cache.py, ranks.py), k-means and labels (kmeans.py), the CLUSTERS folder, fit and
assign (clusters.py), histograms (histogram.py).

The paper's methods condition on them: the most frequent cluster of a domain picks its expert, the
ratio of histograms weights importance sampling, and concentration (top share, entropy) says
whether specialization by cluster can help.
"""

from pnlm.backend_loader import native_bfloat16
from pnlm.clustering.clusters import Clusters, FitResult, assign_clusters, fit_clusters, load_clusters
from pnlm.clustering.embed import EmbeddingRun, ProgressFn, embed_windows
from pnlm.clustering.embedder import Embedder, resolve_embedder
from pnlm.clustering.histogram import (cluster_counts, cluster_histogram, entropy, histogram_report,
                                    importance_weights, top_share)
from pnlm.clustering.kmeans import kmeans, nearest_centroid
from pnlm.clustering.window_features import window_texts

__all__ = [
    "Clusters", "FitResult", "assign_clusters", "fit_clusters", "load_clusters",
    "EmbeddingRun", "Embedder", "ProgressFn", "embed_windows", "native_bfloat16", "resolve_embedder",
    "window_texts", "cluster_counts", "cluster_histogram", "entropy", "histogram_report", "importance_weights",
    "top_share", "kmeans", "nearest_centroid",
]
