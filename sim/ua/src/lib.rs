//! Telephony part of the virtual phones (SIP UA, RTP, call control, panic-button rules).
//! Independent of the rig's SIP crate on purpose: the phone and the rig must not share
//! a SIP implementation, or a bug in one would be hidden by the other.
