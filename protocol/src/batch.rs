//! RecordBatch v2 (magic 2) header view, validation and encoding.
