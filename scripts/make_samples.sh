#!/usr/bin/env bash
# Regenerates the sample clips in samples/ (needs espeak-ng, flite and sox).
# Both sentences are held out of training; the voices are from training voice families.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p samples
espeak-ng -v en-us+m3 -s 165 -w /tmp/what_time.wav "what time is it in paris"
sox /tmp/what_time.wav -r 16000 -c 1 -b 16 samples/what_time.wav
flite -voice awb -t "my phone number is three two zero zero five nine one four five seven" -o /tmp/phone.wav
sox /tmp/phone.wav -r 16000 -c 1 -b 16 samples/phone.flac
rm -f /tmp/what_time.wav /tmp/phone.wav
