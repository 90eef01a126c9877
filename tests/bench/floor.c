/*
 * The floor for the fast-path benchmark: a program that does nothing, linked against the same
 * libraries as fleetprovd. Its cost is dynamic loading and library constructors, which no
 * code in fleetprovd can avoid; the benchmark reports the fast path as a multiple of it.
 */
int main(void)
{
	return 0;
}
