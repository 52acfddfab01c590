// CPU emulation of the CUDA runtime subset agent_attention.cu uses (tests only; see emu.h).
#pragma once
#include "emu.h"
