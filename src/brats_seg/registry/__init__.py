"""The model registry and its audit trail: MLflow runs (tracking) and versions, the registered ONNX model, which
model a URI names, the promotion gate and its comparison, promotion, audit, lineage, and copying a store."""
