//! carelayer-policy (in progress)
