//! Tensor <-> image conversion and PNG files with AUTOMATIC1111 infotext.
