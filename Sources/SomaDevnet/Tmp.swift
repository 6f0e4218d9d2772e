import SomaCore
