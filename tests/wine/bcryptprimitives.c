/*
 * A stand-in bcryptprimitives.dll for running Rust programs under Wine 8, which lacks the
 * export ProcessPrng that Rust's standard library (1.78 and later) uses for random bytes.
 * Built by the Wine test harness (tests/src/wine.rs) with MinGW-w64 and placed next to the
 * .exe; never shipped. ProcessPrng is answered by RtlGenRandom (advapi32 SystemFunction036),
 * the system's cryptographic random generator.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
