"""Inference, apart from training: a run's saved model by name, id or folder (load), calibrated labels
(classifier), batched and streamed replies (generator). Nothing here changes per call on a shared object, so
threads (a server's requests) may share one loaded model."""
