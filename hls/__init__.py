"""HLS C++ of the bit-serial engine (package data), its generators and the g++ C-simulation driver."""
