using System.Runtime.CompilerServices;

// Every P/Invoke in this assembly passes blittable types only; the runtime never marshals.
[assembly: DisableRuntimeMarshalling]
