//! carelayer-hl7v2 (in progress)
